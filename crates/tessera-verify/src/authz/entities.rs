//! One long-lived Cedar entity store of live tasks and their clients.
//!
//! Rebuilding entities per request costs ≈ 40 µs (see reference/cedar.md); keeping one
//! store costs a hash probe. A task is added the first time it is seen (one copy of the
//! store and a transitive-closure pass, once per task), and expired tasks are pruned when
//! the store has grown enough.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid};

#[derive(Debug)]
pub(crate) struct EntityStore {
    entities: ArcSwap<Entities>,
    /// task uid → (client uid, not_after): what is in `entities`, for pruning.
    live: Mutex<HashMap<EntityUid, (EntityUid, i64)>>,
    prune_at: Mutex<usize>,
}

impl EntityStore {
    pub(crate) fn new() -> Self {
        Self {
            entities: ArcSwap::from_pointee(Entities::empty()),
            live: Mutex::new(HashMap::new()),
            prune_at: Mutex::new(1024),
        }
    }

    /// The store, containing `task` (child of `client`).
    pub(crate) fn with_task(
        &self,
        task: &EntityUid,
        client: &EntityUid,
        not_after: i64,
        now: i64,
    ) -> Arc<Entities> {
        let current = self.entities.load_full();
        if current.get(task).is_some() {
            return current;
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.entities.load_full();
        if current.get(task).is_some() {
            return current;
        }
        live.insert(task.clone(), (client.clone(), not_after));
        let mut prune_at = self.prune_at.lock().unwrap_or_else(|e| e.into_inner());
        let rebuilt = if live.len() >= *prune_at {
            live.retain(|_, (_, na)| *na > now);
            *prune_at = (live.len() * 2).max(1024);
            build(live.iter())
        } else {
            (*current)
                .clone()
                .add_entities(entities_for(task, client), None)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "tessera-verify: entity store add failed; rebuilding");
                    build(live.iter())
                })
        };
        let rebuilt = Arc::new(rebuilt);
        self.entities.store(rebuilt.clone());
        rebuilt
    }
}

fn entities_for(task: &EntityUid, client: &EntityUid) -> [Entity; 2] {
    [
        Entity::new_no_attrs(task.clone(), [client.clone()].into_iter().collect()),
        Entity::new_no_attrs(client.clone(), Default::default()),
    ]
}

fn build<'a>(live: impl Iterator<Item = (&'a EntityUid, &'a (EntityUid, i64))>) -> Entities {
    let mut by_uid: HashMap<EntityUid, Entity> = HashMap::new();
    for (task, (client, _)) in live {
        for e in entities_for(task, client) {
            by_uid.insert(e.uid(), e);
        }
    }
    Entities::from_entities(by_uid.into_values(), None).unwrap_or_else(|e| {
        tracing::error!(error = %e, "tessera-verify: entity store rebuild failed");
        Entities::empty()
    })
}

/// Cedar type names, parsed once.
#[derive(Debug)]
pub(crate) struct Types {
    pub(crate) task: EntityTypeName,
    pub(crate) client: EntityTypeName,
    pub(crate) tool: EntityTypeName,
    pub(crate) resource: EntityTypeName,
    pub(crate) prompt: EntityTypeName,
    pub(crate) actions: [EntityUid; 3],
}

impl Types {
    pub(crate) fn new() -> Self {
        let t = |s: &str| s.parse::<EntityTypeName>().expect("valid type name");
        let action = t("Action");
        let a = |id: &str| EntityUid::from_type_name_and_id(action.clone(), EntityId::new(id));
        Self {
            task: t("Task"),
            client: t("Client"),
            tool: t("Tool"),
            resource: t("Resource"),
            prompt: t("Prompt"),
            actions: [a("tools/call"), a("resources/read"), a("prompts/get")],
        }
    }
}

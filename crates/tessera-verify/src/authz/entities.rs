//! Per-task Cedar entities, built once per task and reused by every request of it.
//!
//! A task's facts (client, subject, purpose, consent, scopes, deadline) are signed into
//! its SVID and never change, so they are attributes of the principal `Task` entity,
//! evaluated once, rather than request context rebuilt and re-evaluated on every call
//! (that rebuild was a quarter of a decision). Each task gets its own two-entity store
//! (`Task` in `Client`): adding a task costs the same with ten live tasks or ten
//! thousand, where one shared store would be copied whole on every new task.
//!
//! The cache is keyed by task id but an entry is used only if the peer's signed claims
//! are exactly the ones it was built from: a federated trust domain may mint the same
//! task id, and it must not inherit another task's client or scopes. One task id keeps
//! a few such variants ([`MAX_VARIANTS`]): a task calling both with its certificate and
//! with an access token narrowed to fewer scopes (its peer's claims carry the token's
//! scopes) would otherwise rebuild its entities on every switch.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use tessera_identity::{TaskClaims, TaskId};

/// The entity type of every principal.
pub(crate) const TASK_TYPE: &str = "Task";

/// Below this many cached tasks, expired ones are not pruned.
const PRUNE_FLOOR: usize = 1024;

/// Variants (distinct claims) kept per task id; the least recently built goes first.
pub(crate) const MAX_VARIANTS: usize = 4;

/// The Cedar view of one task.
#[derive(Debug)]
pub(crate) struct TaskEntities {
    /// The claims this was built from.
    claims: TaskClaims,
    /// The client entity id (name, or full SPIFFE ID for a foreign trust domain).
    client_name: String,
    /// `Task::"<task id>"`, the principal.
    pub(crate) principal: EntityUid,
    /// The task (with attributes, child of its client) and the client.
    pub(crate) entities: Entities,
    /// When the leaf it was first seen with expires, for pruning.
    not_after: i64,
}

#[derive(Debug)]
pub(crate) struct EntityStore {
    tasks: RwLock<HashMap<TaskId, Vec<Arc<TaskEntities>>>>,
}

impl EntityStore {
    pub(crate) fn new() -> Self {
        Self {
            tasks: RwLock::new(HashMap::new()),
        }
    }

    /// The entities of the task `claims` describe, whose client entity id is
    /// `client_name`; built on first sight.
    ///
    /// # Errors
    /// Cedar refused to build the entities (a claim Cedar cannot hold); the caller denies.
    pub(crate) fn task(
        &self,
        types: &Types,
        claims: &TaskClaims,
        client_name: &str,
        not_after: i64,
        now: i64,
    ) -> Result<Arc<TaskEntities>, String> {
        let id = claims.task_id;
        let same = |t: &&Arc<TaskEntities>| t.claims == *claims && t.client_name == client_name;
        if let Some(hit) = read(&self.tasks).get(&id).and_then(|v| v.iter().find(same)) {
            return Ok(Arc::clone(hit));
        }
        let built = Arc::new(build(types, claims, client_name, not_after)?);
        let mut tasks = self.tasks.write().unwrap_or_else(|e| e.into_inner());
        // Prune when the map must grow anyway: its capacity doubles at each growth, so
        // pruning stays amortised O(1) per insert without a threshold of its own.
        if tasks.len() >= PRUNE_FLOOR && tasks.len() == tasks.capacity() {
            tasks.retain(|_, variants| {
                variants.retain(|t| t.not_after > now);
                !variants.is_empty()
            });
        }
        let variants = tasks.entry(id).or_default();
        // Another request may have built the same meanwhile: keep one.
        variants.retain(|t| !same(&t));
        if variants.len() >= MAX_VARIANTS {
            variants.remove(0);
        }
        variants.push(Arc::clone(&built));
        Ok(built)
    }

    /// How many tasks are cached.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        read(&self.tasks).len()
    }

    /// How many variants of `task` are cached.
    #[cfg(test)]
    pub(crate) fn variants(&self, task: &TaskId) -> usize {
        read(&self.tasks).get(task).map_or(0, Vec::len)
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves a consistent map (inserts and
    // retains are single calls), so a poisoned lock is still usable.
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn build(
    types: &Types,
    claims: &TaskClaims,
    client_name: &str,
    not_after: i64,
) -> Result<TaskEntities, String> {
    let principal = EntityUid::from_type_name_and_id(
        types.task.clone(),
        EntityId::new(claims.task_id.to_string()),
    );
    let client = EntityUid::from_type_name_and_id(types.client.clone(), EntityId::new(client_name));
    let s = RestrictedExpression::new_string;
    let attrs = HashMap::from([
        ("client".to_owned(), s(client_name.to_owned())),
        ("subject".to_owned(), s(claims.subject.clone())),
        ("purpose".to_owned(), s(claims.purpose.clone())),
        ("consent_id".to_owned(), s(claims.consent_id.clone())),
        (
            "scopes".to_owned(),
            RestrictedExpression::new_set(claims.scopes.iter().map(|sc| s(sc.to_string()))),
        ),
        (
            "deadline".to_owned(),
            RestrictedExpression::new_long(claims.deadline_unix),
        ),
    ]);
    let task = Entity::new(principal.clone(), attrs, HashSet::from([client.clone()]))
        .map_err(|e| format!("task entity: {e}"))?;
    let entities =
        Entities::from_entities([task, Entity::new_no_attrs(client, HashSet::new())], None)
            .map_err(|e| format!("task entities: {e}"))?;
    Ok(TaskEntities {
        claims: claims.clone(),
        client_name: client_name.to_owned(),
        principal,
        entities,
        not_after,
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
            task: t(TASK_TYPE),
            client: t("Client"),
            tool: t("Tool"),
            resource: t("Resource"),
            prompt: t("Prompt"),
            actions: [a("tools/call"), a("resources/read"), a("prompts/get")],
        }
    }
}

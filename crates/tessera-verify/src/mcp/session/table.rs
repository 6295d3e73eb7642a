//! The session table: sessions in a slab of nodes, each on two intrusive LRU lists (all
//! sessions, and its owner's), found by id, so that use, binding, eviction and removal
//! are all O(1) under the [`super::SessionBinding`]'s lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tessera_identity::{ClientId, ServerId, TaskSpiffeId};

use crate::peer::Peer;

/// The identity a session is bound to: the peer's SPIFFE ID, kept as the parsed id and
/// compared as such (the ids print exactly what they parse, so this is string
/// equality) because formatting the id on every request cost more than the lookup.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Owner {
    Task(TaskSpiffeId),
    Client(ClientId),
    Server(ServerId),
}

impl Owner {
    pub(super) fn of(peer: &Peer) -> Self {
        match peer {
            Peer::Task { task, .. } => Self::Task(task.clone()),
            Peer::Client { client, .. } => Self::Client(client.clone()),
            Peer::Server { server, .. } => Self::Server(server.clone()),
        }
    }

    pub(super) fn is(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (Self::Task(owner), Peer::Task { task, .. }) => owner == task,
            (Self::Client(owner), Peer::Client { client, .. }) => owner == client,
            (Self::Server(owner), Peer::Server { server, .. }) => owner == server,
            _ => false,
        }
    }
}

/// No node: the end of a list.
const NIL: usize = usize::MAX;

/// Links of one doubly linked list through the node slab.
#[derive(Clone, Copy, Debug)]
struct Links {
    prev: usize,
    next: usize,
}

const UNLINKED: Links = Links {
    prev: NIL,
    next: NIL,
};

/// A list's ends and length.
#[derive(Clone, Copy, Debug)]
struct Ends {
    /// The most recently used.
    head: usize,
    /// The least recently used.
    tail: usize,
    len: usize,
}

const EMPTY: Ends = Ends {
    head: NIL,
    tail: NIL,
    len: 0,
};

#[derive(Debug)]
pub(super) struct Node {
    id: Arc<str>,
    pub(super) owner: Owner,
    pub(super) used: Instant,
    /// In the list of all sessions.
    all: Links,
    /// In the list of its owner's sessions.
    mine: Links,
}

/// Which of a node's two lists.
#[derive(Clone, Copy)]
enum List {
    All,
    Mine,
}

/// Sessions in a slab of nodes, found by id, each on two LRU lists (all sessions, and
/// its owner's), so that use, binding, eviction and removal are all O(1).
#[derive(Debug)]
pub(super) struct Table {
    nodes: Vec<Option<Node>>,
    free: Vec<usize>,
    pub(super) by_id: HashMap<Arc<str>, usize>,
    by_owner: HashMap<Owner, Ends>,
    all: Ends,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            by_owner: HashMap::new(),
            all: EMPTY,
        }
    }
}

impl Table {
    pub(super) fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("linked nodes are occupied")
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i].as_mut().expect("linked nodes are occupied")
    }

    fn links(&mut self, i: usize, list: List) -> &mut Links {
        let n = self.node_mut(i);
        match list {
            List::All => &mut n.all,
            List::Mine => &mut n.mine,
        }
    }

    fn ends(&mut self, i: usize, list: List) -> &mut Ends {
        match list {
            List::All => &mut self.all,
            List::Mine => {
                let owner = &self.nodes[i]
                    .as_ref()
                    .expect("linked nodes are occupied")
                    .owner;
                self.by_owner
                    .get_mut(owner)
                    .expect("an owner's list exists while it has sessions")
            }
        }
    }

    fn unlink(&mut self, i: usize, list: List) {
        let Links { prev, next } = *self.links(i, list);
        if prev != NIL {
            self.links(prev, list).next = next;
        }
        if next != NIL {
            self.links(next, list).prev = prev;
        }
        let ends = self.ends(i, list);
        if ends.head == i {
            ends.head = next;
        }
        if ends.tail == i {
            ends.tail = prev;
        }
        ends.len -= 1;
        *self.links(i, list) = UNLINKED;
    }

    fn push_front(&mut self, i: usize, list: List) {
        let ends = self.ends(i, list);
        let old_head = ends.head;
        ends.head = i;
        if ends.tail == NIL {
            ends.tail = i;
        }
        ends.len += 1;
        *self.links(i, list) = Links {
            prev: NIL,
            next: old_head,
        };
        if old_head != NIL {
            self.links(old_head, list).prev = i;
        }
    }

    pub(super) fn touch(&mut self, i: usize) {
        self.node_mut(i).used = Instant::now();
        for list in [List::All, List::Mine] {
            if self.ends(i, list).head != i {
                self.unlink(i, list);
                self.push_front(i, list);
            }
        }
    }

    pub(super) fn insert(&mut self, id: &str, owner: Owner) {
        let id: Arc<str> = Arc::from(id);
        self.by_owner.entry(owner.clone()).or_insert(EMPTY);
        let node = Node {
            id: id.clone(),
            owner,
            used: Instant::now(),
            all: UNLINKED,
            mine: UNLINKED,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = Some(node);
                i
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.by_id.insert(id, i);
        self.push_front(i, List::All);
        self.push_front(i, List::Mine);
    }

    /// Removes node `i`; returns its id.
    pub(super) fn remove(&mut self, i: usize) -> Arc<str> {
        self.unlink(i, List::All);
        self.unlink(i, List::Mine);
        let node = self.nodes[i].take().expect("linked nodes are occupied");
        if self.by_owner.get(&node.owner).is_some_and(|e| e.len == 0) {
            self.by_owner.remove(&node.owner);
        }
        self.by_id.remove(&node.id);
        self.free.push(i);
        node.id
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The least recently used session of all, or of `owner`.
    pub(super) fn oldest(&self, owner: Option<&Owner>) -> Option<usize> {
        let ends = match owner {
            None => &self.all,
            Some(o) => self.by_owner.get(o)?,
        };
        (ends.tail != NIL).then_some(ends.tail)
    }

    pub(super) fn owned_by(&self, owner: &Owner) -> usize {
        self.by_owner.get(owner).map_or(0, |e| e.len)
    }
}

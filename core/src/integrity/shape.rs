//! The shape of a record's document: how deep its objects nest and how many there are.
//!
//! A record reads only the fields it knows, so a change may add others (a newer app's field,
//! or a hostile tablet's junk) and the record still reads. Whatever walks the whole document
//! (the conflict finder, the read model) must not then depend on what the sender chose: a change
//! of 2 KB can nest a thousand maps, and a walker that recursed into them overflowed its stack
//! (a server worker aborting the whole process). So every visible object of a record's document
//! is at most [`MAX_DEPTH`] levels below the root, and a document has at most [`MAX_OBJECTS`]
//! visible objects: [`check`] runs after untrusted changes apply (on the device, and on the
//! server for every push, through `RecordDoc::apply_decoded`), and a document past either bound
//! is refused as a whole.
//!
//! Objects only a concurrent, losing value holds are not visible and not walked by anyone; a
//! later change that makes one visible (by deleting the winner) is checked when it applies.
//!
//! Cost: one pass over each visible object's entries, with an explicit stack, stopping at the
//! first object past a bound.

use automerge::{ObjId, ObjType, ROOT, ReadDoc, ValueRef};

/// Deepest an object may sit below the root (the root is at 0). An honest record's deepest objects
/// are maps in a list (an attachment reference, a clock event, a received paper: depth 2; form
/// values are registers holding JSON text); the margin is for fields later versions add.
pub const MAX_DEPTH: usize = 8;
/// Most visible objects (maps, lists, texts) one record's document may hold. An honest record at
/// every list limit holds fewer than 1,000.
pub const MAX_OBJECTS: usize = 4_096;

/// Why a document's shape is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeViolation {
    /// An object sits deeper than [`MAX_DEPTH`].
    #[error("objects nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// More than [`MAX_OBJECTS`] visible objects.
    #[error("more than {MAX_OBJECTS} objects in one record")]
    TooManyObjects,
    /// The document could not be walked (Automerge failed reading what the changes made).
    #[error("objects that cannot be read")]
    Unreadable,
}

/// Checks that every visible object of `doc` is within [`MAX_DEPTH`] of the root and that there
/// are at most [`MAX_OBJECTS`] of them.
pub fn check<D: ReadDoc>(doc: &D) -> Result<(), ShapeViolation> {
    let mut stack: Vec<(ObjId, usize)> = vec![(ROOT, 0)];
    let mut objects = 0usize;
    while let Some((obj, depth)) = stack.pop() {
        objects += 1;
        if objects > MAX_OBJECTS {
            return Err(ShapeViolation::TooManyObjects);
        }
        let mut push = |value: &ValueRef<'_>, id: ObjId| {
            if !matches!(value, ValueRef::Object(_)) {
                return Ok(());
            }
            if depth >= MAX_DEPTH {
                return Err(ShapeViolation::TooDeep);
            }
            stack.push((id, depth + 1));
            Ok(())
        };
        match doc.object_type(&obj).ok() {
            Some(ObjType::Map | ObjType::Table) => {
                for item in doc.map_range(&obj, ..) {
                    let id = item.id();
                    push(&item.value, id)?;
                }
            }
            Some(ObjType::List) => {
                for item in doc.list_range(&obj, ..) {
                    let id = item.id();
                    push(&item.value, id)?;
                }
            }
            Some(ObjType::Text) | None => {}
        }
    }
    Ok(())
}

/// How deep the deepest visible object of `doc` sits (0: the root holds only values). For tests
/// and tools; it walks without a bound on depth, iteratively.
pub fn deepest<D: ReadDoc>(doc: &D) -> usize {
    let mut stack: Vec<(ObjId, usize)> = vec![(ROOT, 0)];
    let mut deepest = 0;
    while let Some((obj, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        let children: Vec<ObjId> = match doc.object_type(&obj).ok() {
            Some(ObjType::Map | ObjType::Table) => doc
                .map_range(&obj, ..)
                .filter(|item| matches!(item.value, ValueRef::Object(_)))
                .map(|item| item.id())
                .collect(),
            Some(ObjType::List) => doc
                .list_range(&obj, ..)
                .filter(|item| matches!(item.value, ValueRef::Object(_)))
                .map(|item| item.id())
                .collect(),
            Some(ObjType::Text) | None => Vec::new(),
        };
        stack.extend(children.into_iter().map(|child| (child, depth + 1)));
    }
    deepest
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};

    use super::*;

    fn nested(depth: usize) -> AutoCommit {
        let mut doc = AutoCommit::new();
        let mut obj = ROOT;
        for _ in 0..depth {
            obj = doc.put_object(&obj, "x", ObjType::Map).expect("put");
        }
        doc
    }

    #[test]
    fn depth_is_bounded() {
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
        assert_eq!(deepest(&nested(MAX_DEPTH)), MAX_DEPTH);
        assert_eq!(check(&nested(MAX_DEPTH + 1)), Err(ShapeViolation::TooDeep));
        // Far past the bound, the walk still stops at once, and `deepest` does not recurse.
        assert_eq!(check(&nested(50_000)), Err(ShapeViolation::TooDeep));
        assert_eq!(deepest(&nested(50_000)), 50_000);
    }

    #[test]
    fn objects_are_counted_in_lists_and_maps() {
        let mut doc = AutoCommit::new();
        let list = doc.put_object(ROOT, "l", ObjType::List).expect("list");
        // The root and the list are two objects.
        for i in 0..MAX_OBJECTS - 2 {
            doc.insert_object(&list, i, ObjType::Map).expect("map");
        }
        assert_eq!(check(&doc), Ok(()));
        doc.put_object(ROOT, "one_more", ObjType::Text)
            .expect("text");
        assert_eq!(check(&doc), Err(ShapeViolation::TooManyObjects));
    }
}

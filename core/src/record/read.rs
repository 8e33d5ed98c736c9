//! [`MapCached`]: a document reader for `autosurgeon` that reads each map and list once.
//!
//! `autosurgeon` hydrates a struct field by field and a list element by element, and every `get`
//! on an Automerge 0.12 document seeks through the operations of the object: most of reading a
//! record went into those seeks. This reader answers `get` on a map or a list from one
//! `map_range` or `list_range` pass over it (the winning value of each key or element, which is
//! what `get` returns) and forwards everything else to the document.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::RangeBounds;

use automerge::iter::{ListRange, MapRange};
use automerge::{AutomergeError, ChangeHash, ObjId, ObjType, Prop, Value};
use autosurgeon::ReadDoc;

/// A value and its id, as `get` returns it.
type Entry = (Value<'static>, ObjId);

/// The winning entries of one object.
enum Entries {
    Map(HashMap<String, Entry>),
    List(Vec<Entry>),
}

/// A document read through a per-object cache: one per read of a whole record (the cache is not
/// updated by later edits).
pub(crate) struct MapCached<'d, D> {
    doc: &'d D,
    objects: RefCell<HashMap<ObjId, Entries>>,
}

impl<'d, D: ReadDoc> MapCached<'d, D> {
    pub(crate) fn new(doc: &'d D) -> Self {
        MapCached {
            doc,
            objects: RefCell::new(HashMap::new()),
        }
    }

    /// `get` of `prop` in `obj` from the cache; `None` when `obj` is neither a map nor a list,
    /// or `prop` does not fit it (the document answers then, as it would have).
    fn cached_get(&self, obj: &ObjId, prop: &Prop) -> Option<Option<Entry>> {
        let mut objects = self.objects.borrow_mut();
        if !objects.contains_key(obj) {
            let entries = match self.doc.object_type(obj)? {
                ObjType::Map => Entries::Map(
                    self.doc
                        .map_range(obj, ..)
                        .map(|item| {
                            let id = item.id();
                            (item.key.into_owned(), (item.value.into_value(), id))
                        })
                        .collect(),
                ),
                ObjType::List => Entries::List(
                    self.doc
                        .list_range(obj, ..)
                        .map(|item| {
                            let id = item.id();
                            (item.value.into_value(), id)
                        })
                        .collect(),
                ),
                ObjType::Table | ObjType::Text => return None,
            };
            objects.insert(obj.clone(), entries);
        }
        match (objects.get(obj)?, prop) {
            (Entries::Map(entries), Prop::Map(key)) => Some(entries.get(key.as_str()).cloned()),
            (Entries::List(entries), Prop::Seq(index)) => Some(entries.get(*index).cloned()),
            _ => None,
        }
    }
}

impl<D: ReadDoc> ReadDoc for MapCached<'_, D> {
    type Parents<'a>
        = D::Parents<'a>
    where
        Self: 'a;

    fn get_heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    fn get<P: Into<Prop>>(
        &self,
        obj: &ObjId,
        prop: P,
    ) -> Result<Option<(Value<'_>, ObjId)>, AutomergeError> {
        let prop = prop.into();
        match self.cached_get(obj, &prop) {
            Some(found) => Ok(found),
            None => self.doc.get(obj, prop),
        }
    }

    fn object_type<O: AsRef<ObjId>>(&self, obj: O) -> Option<ObjType> {
        self.doc.object_type(obj)
    }

    fn map_range<'a, O, R>(&'a self, obj: O, range: R) -> MapRange<'a>
    where
        R: RangeBounds<String> + 'a,
        O: AsRef<ObjId>,
        R: RangeBounds<String>,
    {
        self.doc.map_range(obj, range)
    }

    fn list_range<O: AsRef<ObjId>, R: RangeBounds<usize>>(
        &self,
        obj: O,
        range: R,
    ) -> ListRange<'_> {
        self.doc.list_range(obj, range)
    }

    fn length<O: AsRef<ObjId>>(&self, obj: O) -> usize {
        self.doc.length(obj)
    }

    fn text<O: AsRef<ObjId>>(&self, obj: O) -> Result<String, AutomergeError> {
        self.doc.text(obj)
    }

    fn parents<O: AsRef<ObjId>>(&self, obj: O) -> Result<Self::Parents<'_>, AutomergeError> {
        self.doc.parents(obj)
    }

    fn is_empty(&self) -> bool {
        self.doc.is_empty()
    }
}

/// A document read as it was at `heads` (a past state, or one branch of a merge), for
/// `autosurgeon`: every read forwards to Automerge's `*_at` form. Reading a record this way
/// costs about what reading it now does, without forking the document.
pub(crate) struct AtHeads<'d> {
    doc: &'d automerge::AutoCommit,
    heads: Vec<ChangeHash>,
}

impl<'d> AtHeads<'d> {
    pub(crate) fn new(doc: &'d automerge::AutoCommit, heads: &[ChangeHash]) -> Self {
        AtHeads {
            doc,
            heads: heads.to_vec(),
        }
    }
}

impl ReadDoc for AtHeads<'_> {
    type Parents<'a>
        = automerge::Parents<'a>
    where
        Self: 'a;

    fn get_heads(&self) -> Vec<ChangeHash> {
        self.heads.clone()
    }

    fn get<P: Into<Prop>>(
        &self,
        obj: &ObjId,
        prop: P,
    ) -> Result<Option<(Value<'_>, ObjId)>, AutomergeError> {
        automerge::ReadDoc::get_at(self.doc, obj, prop, &self.heads)
    }

    fn object_type<O: AsRef<ObjId>>(&self, obj: O) -> Option<ObjType> {
        automerge::ReadDoc::object_type(self.doc, obj).ok()
    }

    fn map_range<'a, O, R>(&'a self, obj: O, range: R) -> MapRange<'a>
    where
        R: RangeBounds<String> + 'a,
        O: AsRef<ObjId>,
        R: RangeBounds<String>,
    {
        automerge::ReadDoc::map_range_at(self.doc, obj, range, &self.heads)
    }

    fn list_range<O: AsRef<ObjId>, R: RangeBounds<usize>>(
        &self,
        obj: O,
        range: R,
    ) -> ListRange<'_> {
        automerge::ReadDoc::list_range_at(self.doc, obj, range, &self.heads)
    }

    fn length<O: AsRef<ObjId>>(&self, obj: O) -> usize {
        automerge::ReadDoc::length_at(self.doc, obj, &self.heads)
    }

    fn text<O: AsRef<ObjId>>(&self, obj: O) -> Result<String, AutomergeError> {
        automerge::ReadDoc::text_at(self.doc, obj, &self.heads)
    }

    fn parents<O: AsRef<ObjId>>(&self, obj: O) -> Result<Self::Parents<'_>, AutomergeError> {
        automerge::ReadDoc::parents_at(self.doc, obj, &self.heads)
    }

    fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }
}

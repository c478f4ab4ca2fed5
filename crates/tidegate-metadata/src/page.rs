//! Keyset pagination: a page request, a page, and the opaque cursor between them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The largest page a list returns.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// Where the next page starts: an opaque string made by the store.
///
/// A cursor encodes the sort key of the last item returned (its time and id), so a page is
/// stable while items are added or removed elsewhere. Treat it as opaque; a cursor that was
/// not made by the store is rejected as [`Error::Invalid`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Cursor(String);

impl Cursor {
    /// A cursor from its text form, as a client sent it back.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// Its text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn encode(key: i64, id: &str) -> Self {
        Self(URL_SAFE_NO_PAD.encode(format!("{key}\n{id}")))
    }

    pub(crate) fn decode(&self) -> Result<(i64, String), Error> {
        let invalid = || Error::Invalid {
            field: "after",
            reason: "not a cursor returned by this store".into(),
        };
        let bytes = URL_SAFE_NO_PAD.decode(&self.0).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (key, id) = text.split_once('\n').ok_or_else(invalid)?;
        Ok((key.parse().map_err(|_| invalid())?, id.to_owned()))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which page of a list to return: at most `limit` items after the cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// How many items at most, 1 to [`MAX_PAGE_LIMIT`].
    pub limit: u32,
    /// Start after this cursor (a previous page's [`Page::next`]); `None` starts at the
    /// beginning.
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// The first page, of at most `limit` items.
    pub fn first(limit: u32) -> Self {
        Self { limit, after: None }
    }

    /// The page after `cursor`, of at most `limit` items.
    pub fn after(limit: u32, cursor: Cursor) -> Self {
        Self {
            limit,
            after: Some(cursor),
        }
    }

    /// Checks the limit and decodes the cursor: the limit and the decoded sort key.
    pub(crate) fn resolve(&self) -> Result<(i64, Option<(i64, String)>), Error> {
        if self.limit == 0 || self.limit > MAX_PAGE_LIMIT {
            return Err(Error::Invalid {
                field: "limit",
                reason: format!("must be 1 to {MAX_PAGE_LIMIT}, got {}", self.limit),
            });
        }
        let after = self.after.as_ref().map(Cursor::decode).transpose()?;
        Ok((i64::from(self.limit), after))
    }
}

impl Default for PageRequest {
    /// The first page of 100 items.
    fn default() -> Self {
        Self::first(100)
    }
}

/// One page of a list, in the list's order.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The cursor of the next page; `None` on the last page.
    pub next: Option<Cursor>,
}

//! ISB's pagination: `pageSize` (default 50, at most 250) and an opaque `pageIdentifier`
//! cursor. Lists are pages over ids sorted ascending; the cursor is base64url of the last id
//! returned, so the next page is every id after it. A filter that hides some items (PRIVATE
//! templates for Users) is applied before counting, so a page is never short while more
//! visible items remain.

use std::future::Future;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::jsend::ApiError;

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 250;

/// The query parameters every list takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageQuery {
    pub page_identifier: Option<String>,
    pub page_size: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Return ids strictly after this one.
    pub after: Option<String>,
    pub size: usize,
}

impl PageRequest {
    /// `pageSize` must be a positive integer (values above the maximum are capped);
    /// `pageIdentifier` must be a cursor this API issued.
    pub fn parse(query: &PageQuery) -> Result<Self, ApiError> {
        let size = match query.page_size.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_PAGE_SIZE,
            Some(text) => match text.parse::<usize>() {
                Ok(0) | Err(_) => {
                    return Err(ApiError::invalid(
                        "pageSize",
                        format!("pageSize must be an integer from 1 to {MAX_PAGE_SIZE}"),
                    ))
                }
                Ok(size) => size.min(MAX_PAGE_SIZE),
            },
        };
        let after = match query.page_identifier.as_deref() {
            None | Some("") => None,
            Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| {
                ApiError::invalid("pageIdentifier", "pageIdentifier is not a valid cursor")
            })?),
        };
        Ok(Self { after, size })
    }
}

pub fn encode_cursor(last_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last_id)
}

pub fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.trim_end_matches('='))
        .ok()?;
    let id = String::from_utf8(bytes).ok()?;
    (!id.is_empty()).then_some(id)
}

/// One page of a list, as ISB shapes it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub result: Vec<T>,
    pub next_page_identifier: Option<String>,
}

impl<T> Page<T> {
    pub fn map<U>(self, convert: impl FnMut(T) -> U) -> Page<U> {
        Page {
            result: self.result.into_iter().map(convert).collect(),
            next_page_identifier: self.next_page_identifier,
        }
    }
}

/// Page over `ids` (any order; sorted and deduplicated here), loading items in chunks with
/// `load` and keeping those `keep` accepts. `id_of` gives the id an item was listed under.
pub async fn paginate<T, Load, Loading, E>(
    mut ids: Vec<String>,
    request: &PageRequest,
    load: Load,
    keep: impl Fn(&T) -> bool,
    id_of: impl Fn(&T) -> String,
) -> Result<Page<T>, ApiError>
where
    Load: Fn(Vec<String>) -> Loading,
    Loading: Future<Output = Result<Vec<T>, E>>,
    ApiError: From<E>,
{
    ids.sort_unstable();
    ids.dedup();
    let start = match &request.after {
        Some(after) => ids.partition_point(|id| id.as_str() <= after.as_str()),
        None => 0,
    };
    // One more than the page, to know whether another page follows.
    let wanted = request.size + 1;
    let mut kept: Vec<T> = Vec::with_capacity(wanted);
    let mut remaining = &ids[start..];
    while kept.len() < wanted && !remaining.is_empty() {
        let take = (wanted - kept.len()).min(remaining.len());
        let (chunk, rest) = remaining.split_at(take);
        remaining = rest;
        let loaded = load(chunk.to_vec()).await?;
        kept.extend(loaded.into_iter().filter(|item| keep(item)));
    }
    let more = kept.len() > request.size;
    kept.truncate(request.size);
    let next_page_identifier = if more {
        kept.last().map(|item| encode_cursor(&id_of(item)))
    } else {
        None
    };
    Ok(Page {
        result: kept,
        next_page_identifier,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(size: usize, after: Option<&str>) -> PageRequest {
        PageRequest {
            after: after.map(str::to_string),
            size,
        }
    }

    async fn numbers(ids: Vec<String>) -> Result<Vec<String>, ApiError> {
        Ok(ids)
    }

    #[actix_web::test]
    async fn pages_cover_every_id_once_and_end_with_no_cursor() {
        let ids: Vec<String> = (0..5).map(|index| format!("id-{index}")).collect();
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = paginate(
                ids.clone(),
                &request(2, after.as_deref()),
                numbers,
                |_| true,
                Clone::clone,
            )
            .await
            .unwrap();
            pages += 1;
            seen.extend(page.result);
            match page.next_page_identifier {
                Some(cursor) => after = decode_cursor(&cursor),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ids);
    }

    #[actix_web::test]
    async fn hidden_items_do_not_shorten_a_page() {
        let ids: Vec<String> = (0..6).map(|index| format!("id-{index}")).collect();
        let page = paginate(
            ids,
            &request(2, None),
            numbers,
            |id: &String| !id.ends_with('1') && !id.ends_with('2'),
            Clone::clone,
        )
        .await
        .unwrap();
        assert_eq!(page.result, vec!["id-0", "id-3"]);
        assert!(page.next_page_identifier.is_some());
    }

    #[test]
    fn bad_page_parameters_name_their_field() {
        let zero = PageQuery {
            page_size: Some("0".into()),
            ..Default::default()
        };
        assert!(matches!(
            PageRequest::parse(&zero),
            Err(ApiError::BadRequest { field: Some(ref field), .. }) if field == "pageSize"
        ));
        let garbage = PageQuery {
            page_identifier: Some("!!!".into()),
            ..Default::default()
        };
        assert!(matches!(
            PageRequest::parse(&garbage),
            Err(ApiError::BadRequest { field: Some(ref field), .. }) if field == "pageIdentifier"
        ));
        let big = PageQuery {
            page_size: Some("1000".into()),
            ..Default::default()
        };
        assert_eq!(PageRequest::parse(&big).unwrap().size, MAX_PAGE_SIZE);
    }
}

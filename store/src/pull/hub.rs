//! Fetching a file from the hub: one request per attempt, resuming from the `.part`, retrying
//! transient failures with backoff, and keeping the held copy when the revision moved but the
//! file did not.

use super::{
    land::{Expected, PartFile},
    Downloader, PullCtx, PulledFile,
};
use crate::{
    error::{DownloadError, Result},
    hub::Opened,
    progress::SOURCE_HUB,
};

impl Downloader {
    /// The hub, with retries for transient failures; each retry resumes from the `.part`.
    pub(super) async fn fetch_from_hub(
        &self,
        ctx: &PullCtx<'_>,
        file: &str,
        known: &Expected,
        part: &PartFile,
    ) -> Result<PulledFile> {
        let mut failures = 0;
        let mut restarts = 0;
        loop {
            let before = part.existing().await.0;
            match self.hub_attempt(ctx, file, known, part).await {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {
                    restarts += 1;
                    if restarts > 3 {
                        return Err(DownloadError::Protocol {
                            url: self.hub.file_url(ctx.repo, ctx.revision, file).to_string(),
                            reason: "the file kept changing while downloading".into(),
                        });
                    }
                }
                Err(e) if e.is_transient() => {
                    if part.existing().await.0 > before {
                        failures = 0;
                    } else {
                        failures += 1;
                    }
                    self.retry.back_off(failures, e, ctx.repo, file).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One request to the hub. `Ok(None)`: the `.part` was of another version and is gone; go
    /// again from the start.
    async fn hub_attempt(
        &self,
        ctx: &PullCtx<'_>,
        file: &str,
        known: &Expected,
        part: &PartFile,
    ) -> Result<Option<PulledFile>> {
        let (mut offset, part_tag) = part.existing().await;
        let stale = match (&known.tag(), &part_tag) {
            (_, None) => true,
            (Some(k), Some(p)) => k != p,
            (None, Some(_)) => false,
        };
        if offset > 0 && (stale || known.size.is_some_and(|s| offset > s)) {
            part.discard().await;
            offset = 0;
        }
        let held = self.held_etag(ctx, file).await;
        match self
            .hub
            .open(
                ctx.repo,
                ctx.revision,
                file,
                offset..u64::MAX,
                held.as_deref(),
            )
            .await?
        {
            Opened::Held { meta } => {
                let expected = Expected::from_etag(meta.etag.as_deref(), meta.size);
                match self.unchanged(ctx, file, &expected, &meta.commit).await? {
                    Some(f) => Ok(Some(f)),
                    None => Err(DownloadError::Protocol {
                        url: self.hub.file_url(ctx.repo, ctx.revision, file).to_string(),
                        reason: "the held copy changed while checking it".into(),
                    }),
                }
            }
            Opened::RangeNotSatisfiable { meta, total } => {
                let expected = merge(
                    known,
                    Expected::from_etag(meta.etag.as_deref(), meta.size.or(total)),
                );
                if offset > 0 && total == Some(offset) && part_tag == expected.tag() {
                    // The part was complete; only the rename was missing.
                    let writer = part.open(offset, part_tag.as_deref(), &expected).await?;
                    return self
                        .land(ctx, file, part, writer, &expected, SOURCE_HUB)
                        .await
                        .map(Some);
                }
                part.discard().await;
                Ok(None)
            }
            Opened::Body {
                meta,
                start,
                total,
                body,
            } => {
                let size = meta.size.or(total);
                let expected = merge(known, Expected::from_etag(meta.etag.as_deref(), size));
                let tag = expected.tag();
                if let Some(f) = self.unchanged(ctx, file, &expected, &meta.commit).await? {
                    return Ok(Some(f));
                }
                if start > 0 && part_tag != tag {
                    drop(body);
                    part.discard().await;
                    return Ok(None);
                }
                if !expected.is_verifiable() {
                    tracing::warn!(
                        repo = ctx.repo,
                        file,
                        "the hub gave no hash; the file cannot be verified"
                    );
                }
                if start == 0 && offset > 0 {
                    tracing::info!(
                        repo = ctx.repo,
                        file,
                        "server ignored the range; starting over"
                    );
                }
                let writer = part.open(start, tag.as_deref(), &expected).await?;
                let writer = self
                    .pump(ctx, file, writer, body, expected.size, SOURCE_HUB)
                    .await?;
                self.land(ctx, file, part, writer, &expected, SOURCE_HUB)
                    .await
                    .map(Some)
            }
        }
    }

    /// The hub etag of the copy held, if it is intact on disk.
    async fn held_etag(&self, ctx: &PullCtx<'_>, file: &str) -> Option<String> {
        let rec = ctx.manifest.as_ref()?.files.get(file)?;
        if !rec.is_whole() {
            return None;
        }
        let dest = self.store.file_path(ctx.repo, file).ok()?;
        let on_disk = tokio::fs::metadata(&dest)
            .await
            .is_ok_and(|m| m.len() == rec.size);
        on_disk.then(|| rec.etag.clone()).flatten()
    }

    /// When the revision moved but this file did not (same hash as held), keeps the held copy.
    async fn unchanged(
        &self,
        ctx: &PullCtx<'_>,
        file: &str,
        expected: &Expected,
        commit: &Option<String>,
    ) -> Result<Option<PulledFile>> {
        let Some(rec) = ctx
            .manifest
            .as_ref()
            .and_then(|m| m.files.get(file))
            .filter(|r| r.is_whole())
        else {
            return Ok(None);
        };
        let same = expected.sha256.as_ref().is_some_and(|s| *s == rec.sha256)
            || expected.git_sha1.is_some() && expected.git_sha1 == rec.etag;
        let dest = self.store.file_path(ctx.repo, file)?;
        let on_disk = tokio::fs::metadata(&dest)
            .await
            .is_ok_and(|m| m.len() == rec.size);
        if !(same && on_disk) {
            return Ok(None);
        }
        let mut rec = rec.clone();
        rec.commit = commit.clone().or(ctx.info.sha.clone());
        self.record(ctx, file, rec.clone()).await?;
        Ok(Some(self.already_held(ctx, file, rec)))
    }
}

/// The response's own metadata wins over the listing's (it is what is being downloaded).
fn merge(known: &Expected, from_response: Expected) -> Expected {
    let sha256 = from_response.sha256.or(known.sha256.clone());
    let git_sha1 = if sha256.is_some() {
        None
    } else {
        from_response.git_sha1.or(known.git_sha1.clone())
    };
    Expected {
        sha256,
        git_sha1,
        size: from_response.size.or(known.size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_metadata_wins() {
        let known = Expected {
            sha256: Some("a".repeat(64)),
            git_sha1: None,
            size: Some(3),
        };
        let resp = Expected::from_etag(Some(&"b".repeat(64)), Some(4));
        let m = merge(&known, resp);
        assert_eq!(m.sha256, Some("b".repeat(64)));
        assert_eq!(m.size, Some(4));
        let m = merge(&known, Expected::default());
        assert_eq!(m, known);
    }
}

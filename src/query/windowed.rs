//! Queries of the windowed topologies: `GET /sms/{order_id}` and `GET /alerts`.
//!
//! `/sms/{order_id}` is routed like `/orders/{id}`: the partition's active copy (here or one hop
//! away), else a standby copy. It answers from the two SMS dedup stores, which hold exactly what
//! this application committed to `SEND_SMS` and `SEND_SMS.SUPPRESSED`.
//!
//! `/alerts` is a scatter-gather: the instance asked reads the alert stores of its own copies
//! and asks every other instance in the partition map for theirs (`local=true`, one hop, in
//! parallel). Per partition the active copy's answer wins, a standby's fills in for an active
//! that cannot answer, and partitions nobody answered for are listed in `partitions_missing`
//! (with `complete: false`) rather than silently left out.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use paystream_topology::approval::{AlertStatus, ApprovalAlert, APPROVAL_ALERTS_STORE};
use paystream_topology::partition_for_key;
use paystream_topology::sms::{
    sms_key, SmsRequest, SuppressedSms, SMS_SENT_STORE, SMS_SUPPRESSED_STORE, TEMPLATES,
};
use serde::{Deserialize, Serialize};

use super::deadline::Deadline;
use super::forward::{forward, request_trace, Forwarded, Hop, FORWARDED};
use super::orders::{ask, retry_until_deadline, KeyedParams};
use super::route::{served_as, settle_commit, Route, Served};
use super::{percent_encode, validate_id, QueryError, QueryState};
use crate::engine::store::StoreReader;
use crate::engine::{LocalPartition, Role};

/// Body of `GET /sms/{order_id}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SmsResponse {
    pub order_id: String,
    pub partition: i32,
    /// Requests written to `SEND_SMS`, oldest first (`event_ts` is when).
    pub sent: Vec<SmsRequest>,
    /// Requests written to `SEND_SMS.SUPPRESSED`, with the reason.
    pub suppressed: Vec<SuppressedSms>,
    pub served_by: String,
    pub role: Role,
    /// Records the serving copy is behind (-1: a standby that does not know).
    #[serde(default)]
    pub lag: i64,
}

pub(super) async fn get_sms(
    State(st): State<QueryState>,
    Extension(deadline): Extension<Deadline>,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<KeyedParams>, QueryRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, QueryError> {
    let id = validate_id(id)?;
    let params = KeyedParams::from_query(params)?;
    if params.wait_for.is_some() {
        return Err(QueryError::InvalidParam(
            "wait_for: only GET /orders/{id} long-polls".into(),
        ));
    }
    let partition = partition_for_key(id.as_bytes(), st.partition_count);
    let path = match raw {
        Some(q) => format!("/sms/{}?{q}", percent_encode(&id)),
        None => format!("/sms/{}", percent_encode(&id)),
    };
    let mut route = Route::new(ask(&st, partition, path, &params, deadline, &headers));
    // The future owns what it reads (a borrowing one trips the handler's `Send` check).
    let serve = |l: LocalPartition, s: Served| {
        let (st, id) = (st.clone(), id.clone());
        async move { serve_sms(&st, l, s, id, partition).await }
    };
    retry_until_deadline(&mut route, deadline, &headers, serve).await
}

async fn serve_sms(
    st: &QueryState,
    local: LocalPartition,
    served: Served,
    id: String,
    partition: i32,
) -> Result<Response, QueryError> {
    let reader = |name: &str| match local.readers.get(name) {
        Some(StoreReader::Window(r)) => Ok(r.clone()),
        _ => Err(QueryError::TopologyDisabled("sms")),
    };
    let (sent_r, supp_r) = (reader(SMS_SENT_STORE)?, reader(SMS_SUPPRESSED_STORE)?);
    let key = id.clone();
    // RocksDB reads block: keep them off the async workers.
    let (sent, suppressed) = tokio::task::spawn_blocking(move || {
        let mut sent = Vec::new();
        let mut suppressed = Vec::new();
        for template in TEMPLATES {
            let k = sms_key(template, &key);
            for (_, v) in sent_r.fetch(&k, i64::MIN, i64::MAX)? {
                sent.extend(serde_json::from_slice::<SmsRequest>(&v).ok());
            }
            for (_, v) in supp_r.fetch(&k, i64::MIN, i64::MAX)? {
                suppressed.extend(serde_json::from_slice::<SuppressedSms>(&v).ok());
            }
        }
        sent.sort_by_key(|s: &SmsRequest| s.event_ts);
        suppressed.sort_by_key(|s: &SuppressedSms| s.request.event_ts);
        Ok::<_, paystream_state::StoreError>((sent, suppressed))
    })
    .await
    .map_err(|e| QueryError::Internal(e.to_string()))?
    .map_err(|e| QueryError::Store(e.to_string()))?;
    Ok(Json(SmsResponse {
        order_id: id,
        partition,
        sent,
        suppressed,
        served_by: st.self_addr.clone(),
        role: served.role,
        lag: served.shown_lag(),
    })
    .into_response())
}

/// One instance's alerts for one of its copies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionAlerts {
    pub partition: i32,
    pub role: Role,
    pub served_by: String,
    pub alerts: Vec<ApprovalAlert>,
}

/// Body of `GET /alerts`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AlertsResponse {
    /// Matching alerts over every partition answered for, oldest deadline first.
    pub alerts: Vec<ApprovalAlert>,
    /// True when every partition was answered for.
    pub complete: bool,
    pub partitions_missing: Vec<i32>,
    /// Per partition (with `local=true`: only this instance's copies).
    pub partitions: Vec<PartitionAlerts>,
    pub served_by: String,
}

/// Which alerts `GET /alerts` lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum AlertFilter {
    /// Alerts not resolved.
    #[default]
    Open,
    /// Resolved ones too.
    All,
}

/// Query parameters of `GET /alerts`. Unknown or repeated parameters, and values of the wrong
/// kind (`local=yes`), are refused with 400.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertParams {
    /// Only alerts whose deadline is at or after this epoch ms.
    #[serde(default = "no_lower_bound")]
    since: i64,
    #[serde(default)]
    status: AlertFilter,
    /// Only this instance's copies (what peers ask each other for).
    #[serde(default)]
    local: bool,
}

fn no_lower_bound() -> i64 {
    i64::MIN
}

fn alert_params(q: Result<Query<AlertParams>, QueryRejection>) -> Result<AlertParams, QueryError> {
    q.map(|Query(p)| p)
        .map_err(|e| QueryError::InvalidParam(e.body_text()))
}

pub(super) async fn get_alerts(
    State(st): State<QueryState>,
    Extension(deadline): Extension<Deadline>,
    params: Result<Query<AlertParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<AlertsResponse>, QueryError> {
    let params = alert_params(params)?;
    let all = params.status == AlertFilter::All;
    let mut answers = local_alerts(&st, params.since, all, deadline).await?;
    let local_only = params.local || headers.contains_key(FORWARDED);
    if !local_only {
        let mut peers: BTreeSet<String> = BTreeSet::new();
        for p in 0..st.partition_count {
            if let Some(o) = st.routing.owners(p) {
                peers.insert(o.active);
                peers.extend(o.standbys);
            }
        }
        peers.retain(|e| !e.is_empty() && *e != st.self_addr);
        let mut path = format!(
            "/alerts?local=true&status={}",
            if all { "all" } else { "open" }
        );
        if params.since != i64::MIN {
            path.push_str(&format!("&since={}", params.since));
        }
        // Every peer in parallel, each within --peer-timeout-ms and the request's deadline; a
        // peer that does not answer leaves its partitions in `partitions_missing`.
        let hop = Hop {
            client: &st.client,
            self_addr: &st.self_addr,
            deadline,
            peer_timeout: st.limits.peer_timeout,
            long_poll: false,
            fallback: false,
            trace: request_trace(&headers),
        };
        let calls = peers.iter().map(|peer| {
            let path = &path;
            async move {
                match forward(&hop, peer, path, true).await {
                    Forwarded::Answer(r) => read_peer(r).await,
                    Forwarded::Refused { code, .. } => {
                        tracing::debug!(peer, ?code, "alerts: peer refused");
                        Vec::new()
                    }
                    Forwarded::Unreachable(why) => {
                        tracing::debug!(peer, why, "alerts: peer did not answer");
                        Vec::new()
                    }
                }
            }
        });
        for list in futures::future::join_all(calls).await {
            answers.extend(list);
        }
    }
    Ok(Json(merge(
        answers,
        st.partition_count,
        local_only,
        &st.self_addr,
    )))
}

async fn read_peer(r: Response) -> Vec<PartitionAlerts> {
    let Ok(bytes) = axum::body::to_bytes(r.into_body(), 64 << 20).await else {
        return Vec::new();
    };
    serde_json::from_slice::<AlertsResponse>(&bytes)
        .map(|a| a.partitions)
        .unwrap_or_default()
}

/// Per partition, prefer the active copy's answer; list partitions nobody answered for.
fn merge(
    answers: Vec<PartitionAlerts>,
    partition_count: i32,
    local_only: bool,
    self_addr: &str,
) -> AlertsResponse {
    let mut best: BTreeMap<i32, PartitionAlerts> = BTreeMap::new();
    for a in answers {
        match best.get(&a.partition) {
            Some(b) if b.role == Role::Active || a.role != Role::Active => {}
            _ => {
                best.insert(a.partition, a);
            }
        }
    }
    let partitions_missing: Vec<i32> = if local_only {
        Vec::new()
    } else {
        (0..partition_count)
            .filter(|p| !best.contains_key(p))
            .collect()
    };
    let mut alerts: Vec<ApprovalAlert> = best.values().flat_map(|p| p.alerts.clone()).collect();
    alerts.sort_by(|a, b| (a.deadline_ts, &a.order_id).cmp(&(b.deadline_ts, &b.order_id)));
    AlertsResponse {
        alerts,
        complete: partitions_missing.is_empty(),
        partitions_missing,
        partitions: best.into_values().collect(),
        served_by: self_addr.to_owned(),
    }
}

async fn local_alerts(
    st: &QueryState,
    since: i64,
    all: bool,
    deadline: Deadline,
) -> Result<Vec<PartitionAlerts>, QueryError> {
    let settled = settle_commit(st, deadline).await;
    let copies: Vec<(i32, Role, StoreReader)> = st
        .local
        .snapshot()
        .into_iter()
        .filter_map(|(p, l)| {
            let role = match served_as(st, p, &l).role {
                // Its commit did not end within the wait: the stores may lag the group.
                Role::Active if !settled => Role::Standby,
                role => role,
            };
            Some((p, role, l.readers.get(APPROVAL_ALERTS_STORE)?.clone()))
        })
        .collect();
    if copies.is_empty()
        && st
            .local
            .snapshot()
            .iter()
            .any(|(_, l)| !l.readers.is_empty())
    {
        return Err(QueryError::TopologyDisabled("approval-timeout"));
    }
    let me = st.self_addr.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (partition, role, reader) in copies {
            let StoreReader::Window(r) = reader else {
                continue;
            };
            let mut alerts = Vec::new();
            r.fetch_all(i64::MIN, i64::MAX, &mut |_, _, v| {
                if let Ok(a) = serde_json::from_slice::<ApprovalAlert>(v) {
                    if (all || a.status == AlertStatus::Timeout) && a.deadline_ts >= since {
                        alerts.push(a);
                    }
                }
                true
            })?;
            out.push(PartitionAlerts {
                partition,
                role,
                served_by: me.clone(),
                alerts,
            });
        }
        Ok::<_, paystream_state::StoreError>(out)
    })
    .await
    .map_err(|e| QueryError::Internal(e.to_string()))?
    .map_err(|e| QueryError::Store(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(order: &str, deadline: i64) -> ApprovalAlert {
        ApprovalAlert {
            order_id: order.into(),
            status: AlertStatus::Timeout,
            member_id: None,
            amount: None,
            currency: None,
            requested_ts: deadline - 1,
            deadline_ts: deadline,
            detected_at: deadline,
            resolved_by: None,
            resolved_ts: None,
        }
    }

    fn part(p: i32, role: Role, by: &str, alerts: Vec<ApprovalAlert>) -> PartitionAlerts {
        PartitionAlerts {
            partition: p,
            role,
            served_by: by.into(),
            alerts,
        }
    }

    #[test]
    fn merge_prefers_actives_fills_in_with_standbys_and_names_the_gaps() {
        let answers = vec![
            part(0, Role::Standby, "b", vec![alert("stale", 1)]),
            part(
                0,
                Role::Active,
                "a",
                vec![alert("O-2", 20), alert("O-1", 10)],
            ),
            part(1, Role::Standby, "b", vec![alert("O-3", 5)]),
        ];
        let m = merge(answers, 3, false, "a");
        let ids: Vec<&str> = m.alerts.iter().map(|a| a.order_id.as_str()).collect();
        assert_eq!(ids, ["O-3", "O-1", "O-2"], "sorted by deadline");
        assert_eq!(m.partitions_missing, [2]);
        assert!(!m.complete);
        assert_eq!(m.partitions[0].served_by, "a");
    }

    #[test]
    fn alert_params_are_checked() {
        let parse = |q: &str| {
            let uri: axum::http::Uri = format!("/alerts?{q}").parse().unwrap();
            alert_params(Query::try_from_uri(&uri))
        };
        for bad in [
            "since=abc",
            "status=closed",
            "bogus=1",
            "local=yes",
            "local=1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let p = parse("since=5&status=all&local=true").unwrap();
        assert!(p.since == 5 && p.status == AlertFilter::All && p.local);
        let d = parse("").unwrap();
        assert!(d.since == i64::MIN && d.status == AlertFilter::Open && !d.local);
    }
}

//! The gRPC face of the audit log. Who may call what is decided by the authorization layer
//! from the proto options (Append: mesh services; queries: admins via the gateway, operators);
//! this file validates input and maps errors.

use std::time::Duration;

use ordermesh_contracts::audit::audit_service_server::{AuditService, AuditServiceServer};
use ordermesh_contracts::audit::{
    AppendRequest, AppendResponse, AuditEvent, AuditRecord, ListEventsRequest, ListEventsResponse,
    TailEventsRequest, VerifyChainRequest, VerifyChainResponse,
};
use ordermesh_platform::follow::{FollowStream, follow};
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::status::Violations;
use ordermesh_platform::store::Cursor;
use tonic::{Request, Response, Status};

use crate::log::{AuditLog, Filter};

pub const MAX_EVENTS_PER_APPEND: usize = 500;
const MAX_FIELD: usize = 256;
const MAX_ATTRIBUTES: usize = 32;
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;
/// How often a tail looks for records appended by other replicas.
const TAIL_POLL: Duration = Duration::from_secs(1);

pub struct AuditServer {
    log: AuditLog,
    shutdown: Shutdown,
}

impl AuditServer {
    /// Tails end with UNAVAILABLE when `shutdown` triggers, so a long-lived stream neither
    /// holds up the drain nor ends silently: its client resumes elsewhere from the last
    /// sequence it saw.
    pub fn new(log: AuditLog, shutdown: Shutdown) -> Self {
        Self { log, shutdown }
    }

    pub fn into_service(self) -> AuditServiceServer<Self> {
        AuditServiceServer::new(self)
    }
}

fn check_text(v: &mut Violations, field: &str, value: &str) {
    if value.contains('\0') {
        v.add(field, "contains a NUL character");
    }
}

/// What the contract's declared constraints (event count, required fields, lengths) cannot
/// say: no NUL characters, bounded attributes.
fn validate_events(events: &[AuditEvent]) -> Result<(), Status> {
    let mut v = Violations::new();
    for (i, e) in events.iter().enumerate().take(MAX_EVENTS_PER_APPEND) {
        let f = |name: &str| format!("events[{i}].{name}");
        check_text(&mut v, &f("id"), &e.id);
        check_text(&mut v, &f("actor"), &e.actor);
        check_text(&mut v, &f("resource"), &e.resource);
        check_text(&mut v, &f("action"), &e.action);
        check_text(&mut v, &f("source"), &e.source);
        if e.attributes.len() > MAX_ATTRIBUTES {
            v.add(
                &f("attributes"),
                format!("at most {MAX_ATTRIBUTES} attributes"),
            );
        }
        for (k, val) in &e.attributes {
            if k.len() > MAX_FIELD || val.len() > 4 * MAX_FIELD {
                v.add(&f("attributes"), format!("attribute {k:.32} is too long"));
            }
        }
    }
    v.into_result()
}

/// The page size asked for (the contract declares it non-negative), defaulted and capped.
fn page_size(requested: i32) -> usize {
    match requested {
        n if n <= 0 => DEFAULT_PAGE,
        n => (n as usize).min(MAX_PAGE),
    }
}

fn bad_page_token() -> Status {
    let mut v = Violations::new();
    v.add("page_token", "is not a token this service issued");
    v.into_result()
        .err()
        .unwrap_or_else(|| Status::invalid_argument("page_token"))
}

#[tonic::async_trait]
impl AuditService for AuditServer {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let events = request.into_inner().events;
        validate_events(&events)?;
        let out = self.log.append(events).await?;
        Ok(Response::new(AppendResponse {
            appended: out.appended,
            duplicates: out.duplicates,
        }))
    }

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        check_text(&mut v, "actor", &req.actor);
        check_text(&mut v, "resource", &req.resource);
        check_text(&mut v, "action", &req.action);
        if let (Some(s), Some(e)) = (&req.start_time, &req.end_time)
            && (e.seconds, e.nanos) <= (s.seconds, s.nanos)
        {
            v.add("end_time", "must be after start_time");
        }
        v.into_result()?;
        let size = page_size(req.page_size);
        let cursor = Cursor::from_page_token(&req.page_token).map_err(|_| bad_page_token())?;
        let filter = Filter {
            actor: req.actor,
            resource: req.resource,
            action: req.action,
            start: req.start_time,
            end: req.end_time,
        };
        let (records, next) = self
            .log
            .list(&filter, size, cursor)
            .await
            .map_err(|e| match e {
                crate::log::AuditError::Store(
                    ordermesh_platform::store::StoreError::InvalidCursor,
                ) => bad_page_token(),
                other => other.into(),
            })?;
        Ok(Response::new(ListEventsResponse {
            records,
            next_page_token: next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn verify_chain(
        &self,
        _request: Request<VerifyChainRequest>,
    ) -> Result<Response<VerifyChainResponse>, Status> {
        let v = self.log.verify().await?;
        Ok(Response::new(match v.broken {
            None => VerifyChainResponse {
                ok: true,
                records_checked: v.checked,
                first_broken_sequence: 0,
                detail: format!("{} records, chain intact", v.checked),
            },
            Some(b) => VerifyChainResponse {
                ok: false,
                records_checked: v.checked,
                first_broken_sequence: b.sequence,
                detail: b.detail,
            },
        }))
    }

    type TailEventsStream = FollowStream<AuditRecord>;

    async fn tail_events(
        &self,
        request: Request<TailEventsRequest>,
    ) -> Result<Response<Self::TailEventsStream>, Status> {
        // Declared non-negative in the contract.
        let after = request.into_inner().after_sequence.max(0);
        let last = if after == 0 {
            self.log.last_sequence().await?
        } else {
            after
        };
        let log = self.log.clone();
        Ok(Response::new(follow(
            last,
            log.appended_signal(),
            &self.shutdown,
            TAIL_POLL,
            |last| format!("audit-service is shutting down; resume with after_sequence={last}"),
            move |after| {
                let log = log.clone();
                async move {
                    let records = log.records_after(after, 100).await?;
                    let next = records.last().map_or(after, |r| r.sequence);
                    Ok((next, records))
                }
            },
        )))
    }
}

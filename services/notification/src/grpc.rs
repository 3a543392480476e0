//! The gRPC face of notification-service. The authorization layer has already checked the
//! calling workload and, for calls forwarded by the gateway, that a user is signed in; this
//! file keeps each user to their own notifications and maps errors, once.

use std::sync::Arc;
use std::time::Duration;

use ordermesh_contracts::audit::AuditEvent;
use ordermesh_contracts::notification::notification_service_server::{
    NotificationService, NotificationServiceServer,
};
use ordermesh_contracts::notification::{
    CreateWebhookEndpointRequest, CreateWebhookEndpointResponse, DeleteWebhookEndpointRequest,
    DeleteWebhookEndpointResponse, DeliveryState, GetNotificationPreferencesRequest, IngestRequest,
    IngestResponse, ListNotificationsRequest, ListNotificationsResponse,
    ListWebhookDeliveriesRequest, ListWebhookDeliveriesResponse, ListWebhookEndpointsRequest,
    ListWebhookEndpointsResponse, MarkNotificationsReadRequest, MarkNotificationsReadResponse,
    Notification, NotificationPreferences, ResendWebhookDeliveryRequest,
    StreamNotificationsRequest, UpdateNotificationPreferencesRequest, WebhookDelivery,
};
use ordermesh_contracts::user::GetUserRequest;
use ordermesh_contracts::user::user_service_client::UserServiceClient;
use ordermesh_platform::client::MeshChannel;
use ordermesh_platform::clock::timestamp;
use ordermesh_platform::follow::{FollowStream, follow};
use ordermesh_platform::outbox::Outbox;
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::status::{Violations, invalid};
use ordermesh_platform::store::{Condition, NewItem, Write};
use ordermesh_platform::store::{Cursor, StoreError};
use ordermesh_platform::user_context::UserContext;
use prost::Message as _;
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status};

use crate::dispatcher::enqueue as queue_email;
use crate::events::{draft, notifies, owner_of};
use crate::inbox::{Inbox, InboxError, Stored, initial_email_state};
use crate::mail::Mailer;
use crate::webhooks::{WebhookError, Webhooks, delivery_proto, endpoint_proto, enqueue, log_pk};

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;
const MAX_EVENTS: usize = 500;
/// How often a stream looks for notifications another replica took in.
const STREAM_POLL: Duration = Duration::from_secs(1);
/// How far back a stream reads arrivals again (longer than any write takes to land).
const STREAM_OVERLAP_MS: i64 = 10_000;

/// A URL for the audit trail, which is kept for ever: without its query, where a receiver's
/// own token often sits.
fn without_query(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => String::new(),
    }
}

/// An arrival key's time and notification id.
fn arrival(key: &str) -> Option<(i64, String)> {
    let (at, id) = key.split_once('#')?;
    Some((at.parse().ok()?, id.to_string()))
}
const CONTACT_DEADLINE: Duration = Duration::from_secs(5);
/// Notifications one "mark all" call marks; `marked` tells the caller to call again.
const MAX_MARKED_ALL: usize = 500;

/// The page a list request asks for: its size (defaulted, capped) and where it resumes. A
/// token is taken only for the partition it was issued for, so one user's token never reads
/// another's list.
fn page(size: i32, token: &str, partition: &str) -> Result<(usize, Option<Cursor>), Status> {
    let refused = || invalid("page_token", "is not a token this service issued");
    let size = match size {
        n if n <= 0 => DEFAULT_PAGE,
        n => (n as usize).min(MAX_PAGE),
    };
    let cursor = Cursor::from_page_token(token).map_err(|_| refused())?;
    if cursor.as_ref().is_some_and(|c| c.pk != partition) {
        return Err(refused());
    }
    Ok((size, cursor))
}

/// A store error as the caller sees it: a page token we did not issue is their mistake.
fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::InvalidCursor => invalid("page_token", "is not a token this service issued"),
        e => e.into(),
    }
}

fn unreadable(what: &str, e: prost::DecodeError) -> Status {
    tracing::error!(error = %e, "unreadable {what} data");
    Status::internal(format!("stored {what} data is unreadable"))
}

impl From<InboxError> for Status {
    fn from(e: InboxError) -> Self {
        match e {
            InboxError::Store(e) => store_status(e),
            InboxError::Corrupt(e) => unreadable("notification", e),
            InboxError::Contended => Status::aborted("changed concurrently; retry"),
        }
    }
}

impl From<WebhookError> for Status {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Store(e) => store_status(e),
            WebhookError::Corrupt(e) => unreadable("webhook", e),
            WebhookError::NotFound => Status::not_found("webhook endpoint not found"),
            WebhookError::Invalid { field, description } => invalid(field, &description),
            WebhookError::LimitReached(what) => ordermesh_platform::status::with_reason(
                tonic::Code::FailedPrecondition,
                "LIMIT_REACHED",
                what,
            ),
        }
    }
}

/// The senders a new item wakes.
#[derive(Clone, Default)]
pub struct Wakes {
    pub mail: Arc<Notify>,
    pub hooks: Arc<Notify>,
}

pub struct NotificationServer {
    inbox: Inbox,
    mailer: Mailer,
    webhooks: Webhooks,
    users: UserServiceClient<MeshChannel>,
    /// notification-service's own audit events (webhook endpoint changes).
    outbox: Outbox,
    wakes: Wakes,
    /// Wakes this replica's streams when a notification was taken in.
    arrived: Arc<Notify>,
    shutdown: Shutdown,
}

/// What notification-service is made of.
pub struct Parts {
    pub inbox: Inbox,
    pub mailer: Mailer,
    pub webhooks: Webhooks,
    pub users: UserServiceClient<MeshChannel>,
    pub outbox: Outbox,
    pub wakes: Wakes,
}

impl NotificationServer {
    pub fn new(parts: Parts, shutdown: Shutdown) -> Self {
        Self {
            inbox: parts.inbox,
            mailer: parts.mailer,
            webhooks: parts.webhooks,
            users: parts.users,
            outbox: parts.outbox,
            wakes: parts.wakes,
            arrived: Arc::new(Notify::new()),
            shutdown,
        }
    }

    pub fn into_service(self) -> NotificationServiceServer<Self> {
        NotificationServiceServer::new(self)
    }

    /// The address and name to write to, or `None` when the user no longer exists.
    async fn contact(&self, user_id: &str) -> Result<Option<(String, String)>, Status> {
        let mut request = Request::new(GetUserRequest {
            name: format!("users/{user_id}"),
        });
        request.set_timeout(CONTACT_DEADLINE);
        match self.users.clone().get_user(request).await {
            Ok(user) => {
                let user = user.into_inner();
                Ok(Some((user.email, user.display_name)))
            }
            Err(s) if s.code() == Code::NotFound => Ok(None),
            // The relay retries the batch; nothing is lost while user-service is away.
            Err(s) => Err(Status::unavailable(format!(
                "user-service did not answer a contact lookup: {}",
                s.message()
            ))),
        }
    }

    /// Takes one event in: its notification (in-app, email) and its webhook deliveries.
    /// Returns whether it made any (false: a re-delivery; `None`: nothing to make of it).
    async fn take(&self, event: &AuditEvent) -> Result<Option<bool>, Status> {
        let Some(owner) = owner_of(event) else {
            return Ok(None);
        };
        let mut writes = match draft(event) {
            Some(draft) => match self.notification_writes(event, &draft).await? {
                Some(writes) => writes,
                None => return Ok(Some(false)),
            },
            None => Vec::new(),
        };
        writes.extend(self.webhooks.deliveries_for(&owner, event).await?);
        if writes.is_empty() {
            return Ok(None);
        }
        match self.inbox.table().write(writes).await {
            Ok(_) => Ok(Some(true)),
            Err(StoreError::ConditionFailed { .. }) => Ok(Some(false)),
            Err(e) => Err(e.into()),
        }
    }

    /// The writes of `draft`'s notification and email; `None` when it exists already.
    async fn notification_writes(
        &self,
        event: &AuditEvent,
        draft: &crate::events::Draft,
    ) -> Result<Option<Vec<Write>>, Status> {
        if self.inbox.get(&draft.user_id, &event.id).await?.is_some() {
            return Ok(None);
        }
        let channels = self.inbox.channels(&draft.user_id, draft.category).await?;
        let contact = if channels.email {
            self.contact(&draft.user_id).await?
        } else {
            None
        };
        let stored = Stored {
            notification: Some(Notification {
                name: format!("notifications/{}", event.id),
                category: draft.category as i32,
                title: draft.title.clone(),
                body: draft.body.clone(),
                resource: event.resource.clone(),
                create_time: event.occur_time.or_else(|| Some(timestamp())),
                read: false,
                read_time: None,
                email_state: initial_email_state(contact.is_some()) as i32,
            }),
            in_app: channels.in_app,
            arrived_ms: ordermesh_platform::clock::unix_millis(),
        };
        let mut writes = vec![self.inbox.create(&draft.user_id, &stored)];
        if let Some((to, name)) = &contact {
            let email = self.mailer.render(draft, name).map_err(|e| {
                tracing::error!(error = %e, "email template failed");
                Status::internal("the email could not be rendered")
            })?;
            writes.push(queue_email(&event.id, &draft.user_id, to, email));
        }
        Ok(Some(writes))
    }
}

fn valid_event_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `users/me/notification-preferences` or the caller's own `users/{id}/…`: the user id. Another
/// user's reads as NOT_FOUND.
fn own_preferences(name: &str, user: &UserContext) -> Result<String, Status> {
    let id = name
        .strip_prefix("users/")
        .and_then(|rest| rest.strip_suffix("/notification-preferences"))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| {
            invalid(
                "name",
                "must be users/me/notification-preferences or users/{id}/notification-preferences",
            )
        })?;
    if id == "me" || id == user.user_id {
        Ok(user.user_id.clone())
    } else {
        Err(Status::not_found("notification preferences not found"))
    }
}

const PREFERENCE_PATHS: &[&str] = &[
    "orders",
    "orders.email",
    "orders.in_app",
    "payments",
    "payments.email",
    "payments.in_app",
];

#[tonic::async_trait]
impl NotificationService for NotificationServer {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let events = request.into_inner().events;
        if events.len() > MAX_EVENTS {
            return Err(invalid("events", &format!("at most {MAX_EVENTS} events")));
        }
        let mut v = Violations::new();
        for (i, e) in events.iter().enumerate() {
            v.check(
                valid_event_id(&e.id),
                &format!("events[{i}].id"),
                "must be 1 to 64 letters, digits, '-' or '_'",
            );
        }
        v.into_result()?;
        let mut out = IngestResponse::default();
        for event in &events {
            if !notifies(&event.action) {
                out.ignored += 1;
                continue;
            }
            match self.take(event).await? {
                None => out.ignored += 1,
                Some(true) => out.notified += 1,
                Some(false) => out.duplicates += 1,
            }
        }
        if out.notified > 0 {
            self.wakes.mail.notify_one();
            self.wakes.hooks.notify_one();
            self.arrived.notify_waiters();
        }
        Ok(Response::new(out))
    }

    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        let user = UserContext::require(&request)?;
        let req = request.into_inner();
        let (size, cursor) = page(
            req.page_size,
            &req.page_token,
            &crate::inbox::inbox_pk(&user.user_id),
        )?;
        let (notifications, next) = self
            .inbox
            .list(&user.user_id, size, cursor, req.unread_only)
            .await?;
        Ok(Response::new(ListNotificationsResponse {
            notifications,
            next_page_token: next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn mark_notifications_read(
        &self,
        request: Request<MarkNotificationsReadRequest>,
    ) -> Result<Response<MarkNotificationsReadResponse>, Status> {
        let user = UserContext::require(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        v.check(
            !req.all || req.names.is_empty(),
            "names",
            "must be empty when all is true",
        );
        v.check(
            req.all || !req.names.is_empty(),
            "names",
            "name at least one notification, or set all",
        );
        let mut ids = Vec::with_capacity(req.names.len());
        for (i, name) in req.names.iter().enumerate() {
            match name
                .strip_prefix("notifications/")
                .filter(|id| valid_event_id(id))
            {
                Some(id) => ids.push(id.to_string()),
                None => v.add(&format!("names[{i}]"), "must be notifications/{id}"),
            }
        }
        v.into_result()?;
        if req.all {
            ids = self.inbox.unread_ids(&user.user_id, MAX_MARKED_ALL).await?;
        }
        let now = timestamp();
        let mut marked = 0;
        for id in &ids {
            let changed = self
                .inbox
                .update(&user.user_id, id, |s| match s.notification.as_mut() {
                    Some(n) if !n.read => {
                        n.read = true;
                        n.read_time = Some(now);
                        true
                    }
                    _ => false,
                })
                .await?;
            marked += i32::from(changed);
        }
        Ok(Response::new(MarkNotificationsReadResponse { marked }))
    }

    type StreamNotificationsStream = FollowStream<Notification>;

    async fn stream_notifications(
        &self,
        request: Request<StreamNotificationsRequest>,
    ) -> Result<Response<Self::StreamNotificationsStream>, Status> {
        let user = UserContext::require(&request)?;
        let inbox = self.inbox.clone();
        // Arrivals are read again from STREAM_OVERLAP back: a replica's slower write can land
        // with an earlier arrival time than one already streamed. What was sent (or was there
        // before the stream opened) is remembered for that long and not sent twice.
        let opened = ordermesh_platform::clock::unix_millis();
        let before = inbox
            .arrived_since(&user.user_id, opened - STREAM_OVERLAP_MS, 1000)
            .await?;
        let seen: Arc<std::sync::Mutex<Vec<(i64, String)>>> = Arc::new(std::sync::Mutex::new(
            before
                .into_iter()
                .filter_map(|(key, _)| arrival(&key))
                .collect(),
        ));
        Ok(Response::new(follow(
            opened,
            self.arrived.clone(),
            &self.shutdown,
            STREAM_POLL,
            |_| "notification-service is shutting down; open the stream again".to_string(),
            move |from: i64| {
                let (inbox, user, seen) = (inbox.clone(), user.user_id.clone(), seen.clone());
                async move {
                    let found = inbox
                        .arrived_since(&user, from - STREAM_OVERLAP_MS, 100)
                        .await?;
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    let mut next = from;
                    let mut new = Vec::new();
                    for (key, notification) in found {
                        let Some((at, id)) = arrival(&key) else {
                            continue;
                        };
                        if seen.iter().any(|(_, s)| *s == id) {
                            continue;
                        }
                        next = next.max(at);
                        seen.push((at, id));
                        new.extend(notification);
                    }
                    seen.retain(|(at, _)| *at >= next - STREAM_OVERLAP_MS);
                    Ok((next, new))
                }
            },
        )))
    }

    async fn create_webhook_endpoint(
        &self,
        request: Request<CreateWebhookEndpointRequest>,
    ) -> Result<Response<CreateWebhookEndpointResponse>, Status> {
        let user = UserContext::require(&request)?;
        let req = request.into_inner();
        let (record, write) = self
            .webhooks
            .prepare(&user.user_id, &req.url, &req.event_types, &req.description)
            .await?;
        let mut event = self.outbox.event(
            &format!("users/{}", user.user_id),
            "webhook_endpoint.created",
            &format!("webhook-endpoints/{}", record.id),
        );
        event
            .attributes
            .insert("url".into(), without_query(&record.url));
        event
            .attributes
            .insert("event_types".into(), record.event_types.join(" "));
        let mut writes = vec![write];
        writes.extend(self.outbox.writes(event));
        self.outbox
            .commit(self.webhooks.table().write(writes))
            .await?;
        Ok(Response::new(CreateWebhookEndpointResponse {
            endpoint: Some(endpoint_proto(&record)),
            secret: record.secret.clone(),
        }))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<ListWebhookEndpointsRequest>,
    ) -> Result<Response<ListWebhookEndpointsResponse>, Status> {
        let user = UserContext::require(&request)?;
        let mut endpoints = self.webhooks.endpoints_of(&user.user_id).await?;
        endpoints.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(Response::new(ListWebhookEndpointsResponse {
            endpoints: endpoints.iter().map(endpoint_proto).collect(),
        }))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<DeleteWebhookEndpointRequest>,
    ) -> Result<Response<DeleteWebhookEndpointResponse>, Status> {
        let user = UserContext::require(&request)?;
        let (record, version) = self
            .webhooks
            .owned(&user.user_id, &request.get_ref().name)
            .await?;
        let mut event = self.outbox.event(
            &format!("users/{}", user.user_id),
            "webhook_endpoint.deleted",
            &format!("webhook-endpoints/{}", record.id),
        );
        event
            .attributes
            .insert("url".into(), without_query(&record.url));
        let mut writes = vec![Write::Delete {
            pk: crate::webhooks::endpoint_pk(&record.id),
            sk: "endpoint".into(),
            condition: Condition::Version(version),
        }];
        writes.extend(self.outbox.writes(event));
        match self
            .outbox
            .commit(self.webhooks.table().write(writes))
            .await
        {
            Ok(_) => Ok(Response::new(DeleteWebhookEndpointResponse {})),
            Err(e) if e.is_condition_failed() => {
                Err(Status::aborted("the endpoint changed meanwhile; retry"))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<ListWebhookDeliveriesRequest>,
    ) -> Result<Response<ListWebhookDeliveriesResponse>, Status> {
        let user = UserContext::require(&request)?;
        let req = request.into_inner();
        let (endpoint, _) = self.webhooks.owned(&user.user_id, &req.parent).await?;
        let (size, cursor) = page(req.page_size, &req.page_token, &log_pk(&endpoint.id))?;
        let (deliveries, next) = self.webhooks.deliveries(&endpoint.id, size, cursor).await?;
        Ok(Response::new(ListWebhookDeliveriesResponse {
            deliveries,
            next_page_token: next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn resend_webhook_delivery(
        &self,
        request: Request<ResendWebhookDeliveryRequest>,
    ) -> Result<Response<WebhookDelivery>, Status> {
        let user = UserContext::require(&request)?;
        let name = request.into_inner().name;
        let (endpoint_name, delivery_id) = name
            .split_once("/deliveries/")
            .filter(|(_, d)| valid_event_id(d))
            .ok_or_else(|| {
                invalid(
                    "name",
                    "must be webhook-endpoints/{endpoint}/deliveries/{delivery}",
                )
            })?;
        let (mut endpoint, endpoint_version) =
            self.webhooks.owned(&user.user_id, endpoint_name).await?;
        let (mut log, log_version) = self
            .webhooks
            .delivery(&endpoint.id, delivery_id)
            .await?
            .ok_or_else(|| Status::not_found("delivery not found"))?;
        if log.state == DeliveryState::Pending as i32 {
            return Err(ordermesh_platform::status::with_reason(
                tonic::Code::FailedPrecondition,
                "DELIVERY_PENDING",
                "the delivery is still being attempted; re-send it once it has succeeded or failed",
            ));
        }
        log.state = DeliveryState::Pending as i32;
        log.update_ms = ordermesh_platform::clock::unix_millis();
        let mut writes = vec![
            Write::put(
                NewItem::new(log_pk(&endpoint.id), log.id.clone(), log.encode_to_vec()),
                Condition::Version(log_version),
            ),
            // A fresh round of attempts, due now.
            enqueue(&endpoint.id, &log.id, 0),
        ];
        if endpoint.disabled {
            endpoint.disabled = false;
            endpoint.consecutive_failures = 0;
            writes.push(Webhooks::put_endpoint(&endpoint, endpoint_version));
            writes.extend(self.outbox.writes(self.outbox.event(
                &format!("users/{}", user.user_id),
                "webhook_endpoint.enabled",
                &format!("webhook-endpoints/{}", endpoint.id),
            )));
        }
        match self
            .outbox
            .commit(self.webhooks.table().write(writes))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_condition_failed() => {
                return Err(Status::aborted("the delivery changed meanwhile; retry"));
            }
            Err(e) => return Err(e.into()),
        }
        self.wakes.hooks.notify_one();
        Ok(Response::new(delivery_proto(&log)))
    }

    async fn get_notification_preferences(
        &self,
        request: Request<GetNotificationPreferencesRequest>,
    ) -> Result<Response<NotificationPreferences>, Status> {
        let user = UserContext::require(&request)?;
        let id = own_preferences(&request.get_ref().name, &user)?;
        Ok(Response::new(self.inbox.preferences(&id).await?))
    }

    async fn update_notification_preferences(
        &self,
        request: Request<UpdateNotificationPreferencesRequest>,
    ) -> Result<Response<NotificationPreferences>, Status> {
        let user = UserContext::require(&request)?;
        let req = request.into_inner();
        let wanted = req
            .preferences
            .ok_or_else(|| invalid("preferences", "is required"))?;
        let id = own_preferences(&wanted.name, &user)?;
        // With no mask, the categories the update sets (AIP-134).
        let paths: Vec<String> = match req.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths,
            _ => [
                ("orders", wanted.orders.is_some()),
                ("payments", wanted.payments.is_some()),
                ("security", wanted.security.is_some()),
            ]
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(p, _)| p.to_string())
            .collect(),
        };
        let mut v = Violations::new();
        let security = wanted.security.unwrap_or_default();
        let mut updates = Vec::new();
        for path in &paths {
            match path.as_str() {
                p if PREFERENCE_PATHS.contains(&p) => updates.push(path.clone()),
                "security" | "security.email" | "security.in_app" => {
                    let off = match path.as_str() {
                        "security.email" => !security.email,
                        "security.in_app" => !security.in_app,
                        _ => !(security.email && security.in_app),
                    };
                    v.check(
                        !off,
                        "preferences.security",
                        "security messages (password changed, reset requested) cannot be turned off",
                    );
                }
                other => v.add(
                    "update_mask",
                    format!("{other:.64} is not an updatable path; use orders, payments, or their .email / .in_app"),
                ),
            }
        }
        v.into_result()?;
        Ok(Response::new(
            self.inbox.set_preferences(&id, &updates, &wanted).await?,
        ))
    }
}

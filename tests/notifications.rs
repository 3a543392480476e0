//! notification-service end to end, over real sockets with real mTLS and a real SMTP server
//! (aiosmtpd): events from the services' outboxes become emails and in-app notifications,
//! preferences are honoured, a password reset goes by email, nothing is lost or sent twice
//! while the mail relay or notification-service itself is down, and webhooks arrive signed
//! (checked by the Standard Webhooks library), retried, logged and re-sent.

use std::net::SocketAddr;
use std::time::Duration;

use ordermesh::roles::{Role, Upstreams};
use ordermesh_edge_gateway::GatewayConfig;
use ordermesh_edge_gateway::limits::Limit;
use ordermesh_notification_service::{MailSettings, MailTransport, SmtpSecurity, SmtpSettings};
use ordermesh_platform::store::schema::StoreConfig;
use ordermesh_tests::gateway::RunningGateway;
use ordermesh_tests::http::{Api, StreamingResponse};
use ordermesh_tests::mesh::{RunningService, TestCerts, service_config};
use ordermesh_tests::smtp::{CapturedMail, SmtpServer};
use ordermesh_tests::webhook_receiver::WebhookReceiver;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

struct NotifyMesh {
    certs: TestCerts,
    audit: RunningService,
    notification: Option<RunningService>,
    user: RunningService,
    payment: RunningService,
    gateway: RunningGateway,
    smtp: SmtpServer,
    notification_addr: SocketAddr,
    /// notification-service's store: embedded, or DynamoDB (moto).
    notification_store: StoreConfig,
    upstreams: Upstreams,
    dirs: Vec<tempfile::TempDir>,
}

fn at(a: SocketAddr) -> String {
    format!("https://{a}")
}

impl NotifyMesh {
    async fn start() -> Self {
        Self::start_on(None).await
    }

    /// With notification-service on `store` (`None`: an embedded store).
    async fn start_on(store: Option<StoreConfig>) -> Self {
        let certs = TestCerts::new();
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let notification_store = store.unwrap_or_else(|| StoreConfig::Embedded {
            data_dir: dirs[3].path().to_path_buf(),
        });
        let smtp = SmtpServer::start();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let audit = RunningService::start(Role::Audit, &certs, dirs[0].path()).await;
        // Bound first (any port), so the others know where it is; started below.
        let probe = std::net::TcpListener::bind(any).unwrap();
        let notification_addr = probe.local_addr().unwrap();
        drop(probe);
        let mut upstreams = Upstreams {
            user: String::new(),
            order: at(audit.grpc_addr),
            payment: String::new(),
            audit: at(audit.grpc_addr),
            notification: at(notification_addr),
        };
        let user =
            RunningService::start_with(Role::User, &certs, dirs[1].path(), any, upstreams.clone())
                .await;
        upstreams.user = at(user.grpc_addr);
        let payment = RunningService::start_with(
            Role::Payment,
            &certs,
            dirs[2].path(),
            any,
            upstreams.clone(),
        )
        .await;
        upstreams.payment = at(payment.grpc_addr);
        // These tests sign in and reset more often than the per-address account limit allows;
        // limits have their own tests.
        let config = GatewayConfig {
            rate_account: Limit {
                per_minute: 6000,
                burst: 1000,
            },
            ..Default::default()
        };
        let gateway = RunningGateway::start(&certs, &upstreams, config).await;
        let mut mesh = Self {
            certs,
            audit,
            notification: None,
            user,
            payment,
            gateway,
            smtp,
            notification_addr,
            notification_store,
            upstreams,
            dirs,
        };
        mesh.start_notification().await;
        mesh
    }

    /// Starts (or restarts) notification-service at its address, on its store.
    async fn start_notification(&mut self) {
        let mut config = service_config(
            Role::Notification,
            &self.certs,
            self.notification_store.clone(),
            self.notification_addr,
            self.upstreams.clone(),
        );
        config.mail = Some(MailSettings {
            public_url: "https://shop.example".into(),
            transport: MailTransport::Smtp(SmtpSettings {
                host: "127.0.0.1".into(),
                port: self.smtp.port,
                security: SmtpSecurity::None,
                username: None,
                password: None,
                ca_file: None,
                timeout: Duration::from_secs(5),
            }),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(1),
            ..MailSettings::files(self.dirs[3].path().join("unused"))
        });
        config.webhooks.disable_after = 3;
        self.notification = Some(RunningService::start_config(Role::Notification, config).await);
    }

    async fn stop_notification(&mut self) {
        if let Some(n) = self.notification.take() {
            n.stop().await;
        }
    }

    async fn stop(mut self) {
        self.stop_notification().await;
        self.gateway.stop().await;
        self.payment.stop().await;
        self.user.stop().await;
        self.audit.stop().await;
    }
}

async fn deposit(api: &Api, key: &str, minor: &str) {
    let res = api
        .post(
            "/v1/wallet/deposits",
            json!({"amount": {"currency": "EUR", "amountMinor": minor}, "idempotencyKey": key}),
        )
        .await;
    assert_eq!(res.status, 200, "deposit: {}", res.text());
}

/// Polls the caller's notifications until one satisfies `found`.
async fn wait_for_notification(api: &Api, found: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let res = api.get("/v1/notifications?pageSize=50").await;
        assert_eq!(res.status, 200, "{}", res.text());
        let body = res.json();
        if let Some(n) = body["notifications"]
            .as_array()
            .and_then(|all| all.iter().find(|n| found(n)))
        {
            return n.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such notification within 20 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn to(email: &str) -> impl Fn(&CapturedMail) -> bool + '_ {
    move |m| m.rcpt_tos.iter().any(|r| r == email)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_become_emails_and_in_app_notifications_as_the_user_prefers() {
    let mesh = NotifyMesh::start().await;
    let ada = mesh.gateway.new_user("ada@example.com").await;

    // A live stream, opened before the event.
    let auth = format!("Bearer {}", ada.token.clone().unwrap());
    let mut stream = StreamingResponse::get(
        mesh.gateway.addr,
        "/v1/notifications:stream",
        &[("authorization", &auth), ("accept", "text/event-stream")],
    )
    .await;

    deposit(&ada, "d1", "2500").await;
    let mail = mesh
        .smtp
        .wait_for(Duration::from_secs(20), |m| {
            to("ada@example.com")(m) && m.subject == "Deposit received"
        })
        .await;
    assert!(mail.text.contains("Hello Test,"), "{}", mail.text);
    assert!(
        mail.text.contains("25.00 EUR was added to your wallet."),
        "{}",
        mail.text
    );
    assert!(mail.html.contains("<h1"), "{}", mail.html);
    assert!(mail.html.contains("25.00 EUR"), "{}", mail.html);
    assert!(mail.mail_from.contains("no-reply@ordermesh.local"));

    let streamed = stream
        .read_until(Duration::from_secs(20), |r| {
            String::from_utf8_lossy(&r.body).contains("Deposit received")
        })
        .await;
    assert_eq!(streamed.header("content-type"), Some("text/event-stream"));

    let n = wait_for_notification(&ada, |n| {
        n["title"] == "Deposit received" && n["emailState"] == "EMAIL_STATE_SENT"
    })
    .await;
    assert_eq!(n["category"], "CATEGORY_PAYMENTS");
    assert_eq!(n["read"], false);
    assert!(n["name"].as_str().unwrap().starts_with("notifications/"));

    // Marked read: nothing unread is left.
    let res = ada
        .post("/v1/notifications:markRead", json!({"names": [n["name"]]}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["marked"], 1);
    let unread = ada.get("/v1/notifications?unreadOnly=true").await.json();
    assert!(
        unread["notifications"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{unread}"
    );
    let res = ada
        .post("/v1/notifications:markRead", json!({"names": ["orders/1"]}))
        .await;
    res.problem(400);

    // Preferences: everything on at first; payments' email turned off; security stays on.
    let prefs = ada.get("/v1/users/me/notification-preferences").await;
    assert_eq!(prefs.status, 200, "{}", prefs.text());
    let prefs = prefs.json();
    for category in ["orders", "payments", "security"] {
        assert_eq!(
            prefs[category],
            json!({"email": true, "inApp": true}),
            "{prefs}"
        );
    }
    let res = ada
        .call(
            "PATCH",
            "/v1/users/me/notification-preferences",
            Some(json!({"payments": {"email": false}})),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.json()["payments"],
        json!({"email": false, "inApp": true})
    );
    assert_eq!(res.json()["orders"], json!({"email": true, "inApp": true}));
    let res = ada
        .call(
            "PATCH",
            "/v1/users/me/notification-preferences",
            Some(json!({"security": {"email": false}})),
        )
        .await;
    let p = res.problem(400);
    assert!(p.to_string().contains("cannot be turned off"), "{p}");
    let other = mesh.gateway.new_user("eve@example.com").await;
    let res = other
        .get(&format!(
            "/v1/users/{}/notification-preferences",
            "someone-else"
        ))
        .await;
    res.problem(404);

    deposit(&ada, "d2", "100").await;
    let second = wait_for_notification(&ada, |n| {
        n["title"] == "Deposit received" && n["body"].as_str().unwrap().contains("1.00 EUR")
    })
    .await;
    assert_eq!(second["emailState"], "EMAIL_STATE_NONE", "{second}");
    let deposits = mesh
        .smtp
        .messages()
        .into_iter()
        .filter(|m| to("ada@example.com")(m) && m.subject == "Deposit received")
        .count();
    assert_eq!(deposits, 1, "payments email is off");

    // Someone else's notifications are not Ada's.
    let theirs = other.get("/v1/notifications").await.json();
    assert!(!theirs.to_string().contains("Deposit received"), "{theirs}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_reset_goes_by_email_once_and_ends_every_session() {
    let mesh = NotifyMesh::start().await;
    let anon = mesh.gateway.anonymous();
    mesh.gateway.new_user("bob@example.com").await;
    let login = anon
        .post(
            "/v1/auth/login",
            json!({"email": "bob@example.com", "password": PASSWORD}),
        )
        .await;
    let old_refresh = login.json()["refreshToken"].as_str().unwrap().to_string();

    // The same answer whether or not the account exists.
    let known = anon
        .post(
            "/v1/auth/password-reset",
            json!({"email": "Bob@Example.com"}),
        )
        .await;
    let unknown = anon
        .post(
            "/v1/auth/password-reset",
            json!({"email": "nobody@example.com"}),
        )
        .await;
    assert_eq!(known.status, 202, "{}", known.text());
    assert_eq!(unknown.status, 202, "{}", unknown.text());
    assert_eq!(known.body, unknown.body);

    let mail = mesh
        .smtp
        .wait_for(Duration::from_secs(20), |m| {
            to("bob@example.com")(m) && m.subject == "Password reset requested"
        })
        .await;
    let token = mail
        .text
        .split_whitespace()
        .find(|w| w.starts_with("omr_"))
        .unwrap_or_else(|| panic!("no token in {}", mail.text))
        .to_string();
    assert!(
        mail.text.contains(&format!(
            "https://shop.example/reset-password?token={token}"
        )),
        "{}",
        mail.text
    );
    assert!(
        !mesh
            .smtp
            .messages()
            .iter()
            .any(|m| to("nobody@example.com")(m)),
        "no email for an unknown address"
    );

    // Wrong, then too short, then right; the token then is spent.
    let res = anon
        .post(
            "/v1/auth/password-reset:confirm",
            json!({"token": "omr_not-a-token", "newPassword": "a new long password"}),
        )
        .await;
    let refused = res.problem(400);
    assert!(refused.to_string().contains("token"), "{refused}");
    let res = anon
        .post(
            "/v1/auth/password-reset:confirm",
            json!({"token": token, "newPassword": "short"}),
        )
        .await;
    res.problem(400);
    let res = anon
        .post(
            "/v1/auth/password-reset:confirm",
            json!({"token": token, "newPassword": "a new long password"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = anon
        .post(
            "/v1/auth/password-reset:confirm",
            json!({"token": token, "newPassword": "another long password"}),
        )
        .await;
    assert_eq!(res.problem(400)["violations"], refused["violations"]);

    // The new password signs in, the old one does not, the old session has ended.
    let bob = anon.login("bob@example.com", "a new long password").await;
    let res = anon
        .post(
            "/v1/auth/login",
            json!({"email": "bob@example.com", "password": PASSWORD}),
        )
        .await;
    res.problem(401);
    let res = anon
        .post("/v1/auth/refresh", json!({"refreshToken": old_refresh}))
        .await;
    res.problem(401);

    // Told by email and in the app; the in-app text never carries the token.
    mesh.smtp
        .wait_for(Duration::from_secs(20), |m| {
            to("bob@example.com")(m) && m.subject == "Your password was changed"
        })
        .await;
    let n = wait_for_notification(&bob, |n| n["title"] == "Password reset requested").await;
    assert_eq!(n["category"], "CATEGORY_SECURITY");
    let all = bob.get("/v1/notifications").await.text();
    assert!(!all.contains(&token), "{all}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_or_sent_twice_while_the_relay_or_the_service_is_down() {
    let mut mesh = NotifyMesh::start().await;
    let cy = mesh.gateway.new_user("cy@example.com").await;

    // The mail relay is down: the notification is taken in, its email waits and retries.
    mesh.smtp.stop();
    deposit(&cy, "r1", "700").await;
    wait_for_notification(&cy, |n| n["emailState"] == "EMAIL_STATE_PENDING").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    mesh.smtp.resume();
    mesh.smtp
        .wait_for(Duration::from_secs(20), |m| {
            to("cy@example.com")(m) && m.text.contains("7.00 EUR")
        })
        .await;
    wait_for_notification(&cy, |n| {
        n["body"].as_str().unwrap().contains("7.00 EUR") && n["emailState"] == "EMAIL_STATE_SENT"
    })
    .await;

    // notification-service itself is down: the producers' outboxes keep the event.
    mesh.stop_notification().await;
    deposit(&cy, "r2", "800").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    mesh.start_notification().await;
    mesh.smtp
        .wait_for(Duration::from_secs(30), |m| {
            to("cy@example.com")(m) && m.text.contains("8.00 EUR")
        })
        .await;
    wait_for_notification(&cy, |n| n["body"].as_str().unwrap().contains("8.00 EUR")).await;

    // Each event once: one email and one notification per deposit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mails = mesh.smtp.messages();
    for amount in ["7.00 EUR", "8.00 EUR"] {
        let n = mails
            .iter()
            .filter(|m| to("cy@example.com")(m) && m.text.contains(amount))
            .count();
        assert_eq!(n, 1, "{amount}: {mails:#?}");
    }
    let list = cy.get("/v1/notifications?pageSize=50").await.json();
    let deposits = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["title"] == "Deposit received")
        .count();
    assert_eq!(deposits, 2, "{list}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_signed_retried_logged_and_resent() {
    let mesh = NotifyMesh::start().await;
    let receiver = WebhookReceiver::start();
    let dana = mesh.gateway.new_user("dana@example.com").await;

    // Bad registrations are refused.
    for bad in [
        json!({"url": "ftp://example.com/x", "eventTypes": ["payment.deposited"]}),
        json!({"url": receiver.url, "eventTypes": ["user.password_changed"]}),
        json!({"url": receiver.url, "eventTypes": []}),
    ] {
        let res = dana.post("/v1/webhook-endpoints", bad).await;
        res.problem(400);
    }

    let res = dana
        .post(
            "/v1/webhook-endpoints",
            json!({"url": receiver.url, "eventTypes": ["payment.deposited", "payment.refunded"],
                   "description": "books"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let created = res.json();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let endpoint = created["endpoint"]["name"].as_str().unwrap().to_string();
    receiver.set_secret(&secret);
    let listed = dana.get("/v1/webhook-endpoints").await;
    assert!(listed.text().contains(&endpoint) && !listed.text().contains(&secret));

    // Two 500s, then delivered: every attempt signed and carrying the same webhook-id.
    receiver.fail_next(2);
    deposit(&dana, "w1", "1500").await;
    receiver
        .wait_until(Duration::from_secs(30), |r| {
            r.iter().any(|x| x.status == 200)
        })
        .await;
    let got = receiver.received();
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got.iter().all(|r| r.verified), "{got:#?}");
    assert!(
        got.iter().all(|r| r.id == got[0].id),
        "one webhook-id: {got:#?}"
    );
    let body: Value = serde_json::from_str(&got[2].body).unwrap();
    assert_eq!(body["type"], "payment.deposited");
    assert_eq!(body["data"]["attributes"]["amount_minor"], "1500");
    assert_eq!(body["data"]["id"], got[0].id.as_str());

    // The owner reads the delivery log; nobody else does.
    let log = dana.get(&format!("/v1/{endpoint}/deliveries")).await;
    assert_eq!(log.status, 200, "{}", log.text());
    let delivery = log.json()["deliveries"][0].clone();
    assert_eq!(delivery["state"], "DELIVERY_STATE_SUCCEEDED", "{delivery}");
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(delivery["lastStatusCode"], 200);
    let other = mesh.gateway.new_user("mallory@example.com").await;
    (other.get(&format!("/v1/{endpoint}/deliveries")).await).problem(404);

    // A re-send: the same webhook-id once more, freshly signed.
    let name = delivery["name"].as_str().unwrap();
    let res = dana.post(&format!("/v1/{name}:resend"), json!({})).await;
    assert_eq!(res.status, 200, "{}", res.text());
    receiver
        .wait_until(Duration::from_secs(20), |r| {
            r.iter().filter(|x| x.status == 200).count() == 2
        })
        .await;
    let got = receiver.received();
    assert!(
        got.iter().all(|r| r.verified && r.id == got[0].id),
        "{got:#?}"
    );

    // Each event once per delivery id; a deleted endpoint gets nothing more.
    deposit(&dana, "w2", "200").await;
    receiver
        .wait_until(Duration::from_secs(20), |r| {
            r.iter()
                .map(|x| x.id.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == 2
        })
        .await;

    // Failing on and on: the endpoint is disabled and the delivery given up; a re-send
    // enables it again and delivers.
    receiver.fail_next(1000);
    deposit(&dana, "w4", "400").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let log = dana.get(&format!("/v1/{endpoint}/deliveries")).await.json();
        let newest = log["deliveries"][0].clone();
        if newest["state"] == "DELIVERY_STATE_FAILED" {
            break newest;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not given up: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        failed["lastError"].as_str().unwrap().contains("disabled"),
        "{failed}"
    );
    let listed = dana.get("/v1/webhook-endpoints").await.json();
    assert_eq!(listed["endpoints"][0]["disabled"], true, "{listed}");
    receiver.fail_next(0);
    let name = failed["name"].as_str().unwrap();
    let res = dana.post(&format!("/v1/{name}:resend"), json!({})).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let id = name.rsplit('/').next().unwrap().to_string();
    receiver
        .wait_until(Duration::from_secs(20), |r| {
            r.iter().any(|x| x.id == id && x.status == 200)
        })
        .await;
    let listed = dana.get("/v1/webhook-endpoints").await.json();
    assert_eq!(listed["endpoints"][0]["disabled"], false, "{listed}");

    let res = dana.call("DELETE", &format!("/v1/{endpoint}"), None).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let before = receiver.received().len();
    deposit(&dana, "w3", "300").await;
    wait_for_notification(&dana, |n| n["body"].as_str().unwrap().contains("3.00 EUR")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), before, "nothing after deletion");
    mesh.stop().await;
}

/// The same service on DynamoDB (moto), as clusters run it: notifications, the email and
/// webhook queues, preferences and the live stream over the real backend's conditional
/// writes, index queries and ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_dynamodb_events_reach_email_app_stream_and_webhooks_once() {
    let store = ordermesh_tests::stores::dynamo_config();
    store.create_tables().await.expect("create tables");
    let mesh = NotifyMesh::start_on(Some(store)).await;
    let receiver = WebhookReceiver::start();
    let eve = mesh.gateway.new_user("eve@example.com").await;
    let res = eve
        .post(
            "/v1/webhook-endpoints",
            json!({"url": receiver.url, "eventTypes": ["payment.deposited"]}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    receiver.set_secret(res.json()["secret"].as_str().unwrap());
    let auth = format!("Bearer {}", eve.token.clone().unwrap());
    let mut stream = StreamingResponse::get(
        mesh.gateway.addr,
        "/v1/notifications:stream",
        &[("authorization", &auth), ("accept", "text/event-stream")],
    )
    .await;
    receiver.fail_next(1);

    deposit(&eve, "dy1", "4200").await;
    mesh.smtp
        .wait_for(Duration::from_secs(30), |m| {
            to("eve@example.com")(m) && m.text.contains("42.00 EUR")
        })
        .await;
    stream
        .read_until(Duration::from_secs(30), |r| {
            String::from_utf8_lossy(&r.body).contains("42.00 EUR")
        })
        .await;
    receiver
        .wait_until(Duration::from_secs(30), |r| {
            r.iter().any(|x| x.status == 200 && x.verified)
        })
        .await;
    let n = wait_for_notification(&eve, |n| n["emailState"] == "EMAIL_STATE_SENT").await;
    assert_eq!(n["title"], "Deposit received");
    let res = eve
        .post("/v1/notifications:markRead", json!({"all": true}))
        .await;
    assert_eq!(res.json()["marked"], 1, "{}", res.text());
    let res = eve
        .call(
            "PATCH",
            "/v1/users/me/notification-preferences",
            Some(json!({"payments": {"inApp": false}})),
        )
        .await;
    assert_eq!(
        res.json()["payments"],
        json!({"email": true, "inApp": false})
    );

    // Exactly once each, retries included.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = receiver.received();
    assert_eq!(
        got.iter().filter(|r| r.status == 200).count(),
        1,
        "{got:#?}"
    );
    assert!(got.iter().all(|r| r.id == got[0].id));
    let mails = mesh
        .smtp
        .messages()
        .into_iter()
        .filter(|m| to("eve@example.com")(m))
        .count();
    assert_eq!(mails, 1);
    mesh.stop().await;
}

//! Email: the message a draft becomes (plain text and HTML from templates), and the two ways
//! it leaves: an SMTP relay (lettre; plain, STARTTLS or TLS, with credentials), or, for local
//! runs without a relay, an `.eml` file per message under a directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::Environment;

use crate::events::Draft;

/// How a connection to the relay is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain SMTP (a relay on the same host or a test server).
    None,
    /// STARTTLS, required: no message is sent over an unencrypted connection.
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

impl std::str::FromStr for SmtpSecurity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "starttls" => Ok(Self::StartTls),
            "tls" => Ok(Self::Tls),
            other => Err(format!("{other:.32} is not one of none, starttls, tls")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A CA certificate (PEM) to trust for the relay besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// How long one attempt may take.
    pub timeout: Duration,
}

/// Where email goes.
#[derive(Debug, Clone)]
pub enum MailTransport {
    Smtp(SmtpSettings),
    /// One `.eml` file per message in this directory.
    Files(PathBuf),
}

#[derive(Debug, Clone)]
pub struct MailSettings {
    /// The From address, `Name <address>`.
    pub from: String,
    /// Where links in emails point (the web app in front of the public API).
    pub public_url: String,
    pub transport: MailTransport,
    /// Attempts before an email is given up as failed.
    pub max_attempts: u32,
    /// The first retry's delay; doubled per attempt, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl MailSettings {
    /// Local defaults: `.eml` files under `dir`.
    pub fn files(dir: PathBuf) -> Self {
        Self {
            from: "ordermesh <no-reply@ordermesh.local>".into(),
            public_url: "http://127.0.0.1:8080".into(),
            transport: MailTransport::Files(dir),
            max_attempts: 8,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail settings: {0}")]
    Settings(String),
    #[error("the message cannot be built: {0}")]
    Message(String),
    /// The relay refused for good (a 5xx answer): retrying will not help.
    #[error("the mail relay refused the message: {0}")]
    Refused(String),
    /// Worth another attempt: the relay is away, slow or said "try later".
    #[error("the mail relay could not take the message now: {0}")]
    Transient(String),
}

impl MailError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::Message(_))
    }
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Renders drafts into emails and sends them.
#[derive(Clone)]
pub struct Mailer {
    settings: Arc<MailSettings>,
    from: Mailbox,
    templates: Arc<Environment<'static>>,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
}

impl Mailer {
    pub fn new(settings: MailSettings) -> Result<Self, MailError> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| MailError::Settings(format!("from address {:?}: {e}", settings.from)))?;
        let mut env = Environment::new();
        env.add_template("email.txt", include_str!("templates/email.txt"))
            .map_err(|e| MailError::Settings(e.to_string()))?;
        env.add_template("email.html", include_str!("templates/email.html"))
            .map_err(|e| MailError::Settings(e.to_string()))?;
        let smtp = match &settings.transport {
            MailTransport::Smtp(s) => Some(smtp_transport(s)?),
            MailTransport::Files(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    MailError::Settings(format!("mail directory {}: {e}", dir.display()))
                })?;
                None
            }
        };
        Ok(Self {
            settings: Arc::new(settings),
            from,
            templates: Arc::new(env),
            smtp,
        })
    }

    pub fn settings(&self) -> &MailSettings {
        &self.settings
    }

    /// The email `draft` becomes for a reader called `name`.
    pub fn render(&self, draft: &Draft, name: &str) -> Result<Rendered, MailError> {
        let base = self.settings.public_url.trim_end_matches('/');
        let action = draft.action.as_ref();
        let mut vars = std::collections::BTreeMap::new();
        vars.insert("title", draft.title.clone());
        vars.insert(
            "name",
            if name.is_empty() {
                "there".into()
            } else {
                name.to_string()
            },
        );
        vars.insert("body", draft.body.clone());
        vars.insert(
            "action_url",
            action
                .map(|a| format!("{base}{}", a.path))
                .unwrap_or_default(),
        );
        vars.insert(
            "action_label",
            action.map(|a| a.label.clone()).unwrap_or_default(),
        );
        vars.insert(
            "code",
            action.and_then(|a| a.code.clone()).unwrap_or_default(),
        );
        vars.insert("preferences_url", format!("{base}/settings/notifications"));
        let render = |name: &str| {
            self.templates
                .get_template(name)
                .and_then(|t| t.render(&vars))
                .map_err(|e| MailError::Message(e.to_string()))
        };
        Ok(Rendered {
            subject: draft.title.clone(),
            text: render("email.txt")?,
            html: render("email.html")?,
        })
    }

    /// Sends one email to `to`; `id` names the message (and its file in local runs).
    pub async fn send(&self, id: &str, to: &str, email: &Rendered) -> Result<(), MailError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| MailError::Message(format!("recipient: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .message_id(Some(format!("<{id}@ordermesh>")))
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|e| MailError::Message(e.to_string()))?;
        match (&self.smtp, &self.settings.transport) {
            (Some(smtp), _) => smtp.send(message).await.map(|_| ()).map_err(|e| {
                if e.is_permanent() {
                    MailError::Refused(e.to_string())
                } else {
                    MailError::Transient(e.to_string())
                }
            }),
            (None, MailTransport::Files(dir)) => write_eml(dir, id, &message.formatted()).await,
            (None, MailTransport::Smtp(_)) => Err(MailError::Settings("no SMTP transport".into())),
        }
    }
}

/// Writes the message whole or not at all (a temporary file renamed into place), so a
/// reader never opens half a message.
async fn write_eml(dir: &std::path::Path, id: &str, bytes: &[u8]) -> Result<(), MailError> {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let tmp = dir.join(format!(".{safe}.eml.tmp"));
    let path = dir.join(format!("{safe}.eml"));
    let io = |e: std::io::Error| MailError::Transient(format!("{}: {e}", path.display()));
    tokio::fs::write(&tmp, bytes).await.map_err(io)?;
    tokio::fs::rename(&tmp, &path).await.map_err(io)?;
    Ok(())
}

fn smtp_transport(s: &SmtpSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    let tls = match s.security {
        SmtpSecurity::None => Tls::None,
        SmtpSecurity::StartTls | SmtpSecurity::Tls => {
            let mut params = TlsParameters::builder(s.host.clone());
            if let Some(ca) = &s.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| MailError::Settings(format!("{}: {e}", ca.display())))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| MailError::Settings(format!("{}: {e}", ca.display())))?;
                params = params.add_root_certificate(cert);
            }
            let params = params
                .build_rustls()
                .map_err(|e| MailError::Settings(e.to_string()))?;
            if s.security == SmtpSecurity::Tls {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
        .port(s.port)
        .tls(tls)
        .timeout(Some(s.timeout));
    if let (Some(user), Some(password)) = (&s.username, &s.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Action;
    use ordermesh_contracts::notification::Category;

    fn draft(action: Option<Action>) -> Draft {
        Draft {
            user_id: "u1".into(),
            category: Category::Security,
            title: "Password reset requested".into(),
            body: "Someone <b>asked</b>.".into(),
            action,
        }
    }

    #[test]
    fn emails_render_text_and_escaped_html_with_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = MailSettings::files(dir.path().to_path_buf());
        settings.public_url = "https://shop.example/".into();
        let mailer = Mailer::new(settings).unwrap();
        let r = mailer
            .render(
                &draft(Some(Action {
                    label: "Choose a new password".into(),
                    path: "/reset-password?token=omr_abc".into(),
                    code: Some("omr_abc".into()),
                })),
                "Ada <admin>",
            )
            .unwrap();
        assert_eq!(r.subject, "Password reset requested");
        assert!(r.text.contains("Hello Ada <admin>,"), "{}", r.text);
        assert!(
            r.text
                .contains("https://shop.example/reset-password?token=omr_abc")
        );
        assert!(r.html.contains("Hello Ada &lt;admin&gt;,"), "{}", r.html);
        assert!(r.html.contains("Someone &lt;b&gt;asked&lt;"), "{}", r.html);
        assert!(!r.html.contains("<b>"));
        // Escaped as an attribute value (`/` as `&#x2f;`), which reads back as the link.
        assert!(r.html.contains("href=\"https:"), "{}", r.html);
        assert!(
            r.html.contains("reset-password?token=omr_abc\""),
            "{}",
            r.html
        );
        let plain = mailer.render(&draft(None), "").unwrap();
        assert!(!plain.text.contains("code"), "{}", plain.text);
        assert!(plain.text.contains("Hello there,"));
    }

    #[tokio::test]
    async fn local_runs_write_one_eml_file_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let mailer = Mailer::new(MailSettings::files(dir.path().to_path_buf())).unwrap();
        let r = mailer.render(&draft(None), "Ada").unwrap();
        mailer.send("n-1", "ada@example.com", &r).await.unwrap();
        let eml = std::fs::read_to_string(dir.path().join("n-1.eml")).unwrap();
        assert!(eml.contains("To: ada@example.com"), "{eml}");
        assert!(eml.contains("Subject: Password reset requested"));
        assert!(eml.contains("multipart/alternative"));
        assert!(eml.contains("Message-ID: <n-1@ordermesh>"));
        assert!(matches!(
            mailer.send("n-2", "not an address", &r).await,
            Err(e) if e.is_permanent()
        ));
    }
}

//! Email over SMTP with `lettre`: STARTTLS (587), implicit TLS (465) or plain (for
//! a local relay), optional AUTH, text with an optional HTML alternative, From and
//! Reply-To from config. SMTP 4xx answers are transient, 5xx permanent.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::Failure;
use super::request::Email;
use crate::config::EmailConfig;

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("notifications.email.{key}: {reason}")]
    Config { key: &'static str, reason: String },
}

/// An SMTP sender.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
}

impl Mailer {
    pub fn new(c: &EmailConfig) -> Result<Mailer, EmailError> {
        let bad = |key: &'static str, reason: String| EmailError::Config { key, reason };
        let from: Mailbox = c
            .from
            .parse()
            .map_err(|e| bad("from", format!("{:?}: {e}", c.from)))?;
        let reply_to = match c.reply_to.as_str() {
            "" => None,
            r => Some(
                r.parse()
                    .map_err(|e| bad("reply_to", format!("{r:?}: {e}")))?,
            ),
        };
        // A private relay's CA, trusted besides the system's roots.
        let ca = match c.ca_file.as_str() {
            "" => None,
            path => {
                let pem =
                    std::fs::read(path).map_err(|e| bad("ca_file", format!("{path}: {e}")))?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(bad("ca_file", format!("{path}: no PEM certificate in it")));
                }
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| bad("ca_file", format!("{path}: {e}")))?;
                Some(cert)
            }
        };
        let tls_params = || {
            let mut b = TlsParameters::builder(c.smtp_host.clone());
            if let Some(cert) = &ca {
                b = b.add_root_certificate(cert.clone());
            }
            b.build().map_err(|e| bad("smtp_host", e.to_string()))
        };
        let tls = match c.tls.as_str() {
            "starttls" => Tls::Required(tls_params()?),
            "tls" => Tls::Wrapper(tls_params()?),
            "none" => Tls::None,
            other => {
                return Err(bad(
                    "tls",
                    format!("{other:?}: expected starttls, tls or none"),
                ));
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.smtp_host)
            .port(c.smtp_port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(c.timeout_s.max(1))));
        if !c.username.is_empty() {
            builder = builder.credentials(Credentials::new(c.username.clone(), c.password.clone()));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            reply_to,
        })
    }

    /// Send `email`; the server's acceptance line (it often names the queue id).
    pub async fn send(&self, email: &Email) -> Result<String, Failure> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(&email.subject);
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
        }
        for to in &email.to {
            let to: Mailbox = to.parse().map_err(|e| Failure::Permanent {
                reason: format!("email: bad recipient {to:?}: {e}"),
            })?;
            builder = builder.to(to);
        }
        let message = match &email.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                html.clone(),
            )),
            None => builder.body(email.text.clone()),
        }
        .map_err(|e| Failure::Permanent {
            reason: format!("email: {e}"),
        })?;
        match self.transport.send(message).await {
            Ok(response) => Ok(response.message().collect::<Vec<_>>().join(" ")),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// SMTP 5xx: permanent; 4xx, timeouts and connection errors: transient; a refused
/// login: our credentials.
pub fn classify(e: &lettre::transport::smtp::Error) -> Failure {
    let reason = format!("smtp: {e}");
    let code = e.status().map(u16::from);
    match code {
        Some(535) | Some(534) | Some(530) => Failure::Auth { reason },
        _ if e.is_permanent() => Failure::Permanent { reason },
        _ => Failure::transient(reason),
    }
}

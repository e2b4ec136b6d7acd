//! The SMTP server state machine (RFC 5321 sections 3, 4.1.1 and 4.1.4; RFC 3207 for STARTTLS;
//! RFC 1870 SIZE; RFC 2920 PIPELINING), without I/O.
//!
//! A [`Session`] consumes command lines and writes replies into an output buffer; what the I/O
//! layer must do next comes back as an [`Action`]. The DATA stream itself is decoded by the I/O
//! layer with the session's [`DataDecoder`]; the session judges the result and hands out the
//! envelope to queue.

use std::net::IpAddr;
use std::rc::Rc;

use super::data::{DataDecoder, DataError};
use super::parser::{Command, ParseError, Path, parameters, parse_command};
use super::policy::RecipientPolicy;
use super::received::{Trace, ip_text};
use super::reply::{Reply, Status};
use super::server::SubmitError;
use crate::config::{Config, Role};
use crate::envelope::{Envelope, QueueId, unix_now};

/// What the I/O layer does after a reply has been written to the output buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the next command.
    Continue,
    /// Send the output, drop everything buffered from the client, then do the TLS handshake
    /// and call [`Session::tls_started`].
    StartTls,
    /// Decode the message with [`Session::data_decoder`], then call [`Session::end_of_data`].
    EnterData,
    /// Send the output and close the connection.
    Quit,
    /// Queue this message, then report the outcome with [`Session::submitted`].
    Submit(Envelope),
}

const OK: Reply = Reply::fixed(250, Status::new(2, 0, 0), "Ok");
const SENDER_OK: Reply = Reply::fixed(250, Status::new(2, 1, 0), "Sender ok");
const RECIPIENT_OK: Reply = Reply::fixed(250, Status::new(2, 1, 5), "Recipient ok");
const START_TLS: Reply = Reply::fixed(220, Status::new(2, 0, 0), "Ready to start TLS");
const VRFY: Reply = Reply::fixed(
    252,
    Status::new(2, 5, 0),
    "Cannot verify the user, but will accept mail and attempt delivery",
);
const HELP: Reply = Reply::fixed(
    214,
    Status::new(2, 0, 0),
    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS",
);
const TLS_REQUIRED: Reply = Reply::fixed(
    530,
    Status::new(5, 7, 0),
    "Must issue a STARTTLS command first",
);
const TLS_ACTIVE: Reply = Reply::fixed(503, Status::new(5, 5, 1), "TLS already active");
const HELLO_FIRST: Reply = Reply::fixed(503, Status::new(5, 5, 1), "Send EHLO or HELO first");
const NESTED_MAIL: Reply = Reply::fixed(
    503,
    Status::new(5, 5, 1),
    "Sender already given; RSET first",
);
const MAIL_FIRST: Reply = Reply::fixed(503, Status::new(5, 5, 1), "Need MAIL command first");
const NO_RECIPIENTS: Reply = Reply::fixed(554, Status::new(5, 5, 1), "No valid recipients");
const TOO_MANY_RECIPIENTS: Reply = Reply::fixed(452, Status::new(4, 5, 3), "Too many recipients");
const MESSAGE_TOO_BIG: Reply = Reply::fixed(
    552,
    Status::new(5, 3, 4),
    "Message size exceeds the maximum size",
);
const BAD_SIZE: Reply = Reply::fixed(501, Status::new(5, 5, 4), "Malformed SIZE parameter");
const UNSUPPORTED_PARAMETER: Reply =
    Reply::fixed(555, Status::new(5, 5, 4), "Unsupported parameter");
const LINE_TOO_LONG: Reply = Reply::fixed(500, Status::new(5, 5, 2), "Line too long");
const START_DATA: Reply = Reply {
    code: 354,
    status: None,
    text: std::borrow::Cow::Borrowed("End data with <CR><LF>.<CR><LF>"),
};

/// One SMTP session's protocol state.
#[derive(Debug)]
pub struct Session {
    config: Rc<Config>,
    role: Role,
    peer: IpAddr,
    /// TLS version and cipher once STARTTLS succeeded.
    tls: Option<String>,
    helo: Option<Helo>,
    transaction: Option<Transaction>,
    /// Negative replies so far; past `smtp.max_errors` the session ends.
    errors: u32,
}

#[derive(Debug)]
struct Helo {
    name: String,
    extended: bool,
}

#[derive(Debug)]
struct Transaction {
    reverse_path: String,
    recipients: Vec<String>,
}

impl Session {
    /// A session for a client at `peer` on a listener with `role`.
    pub fn new(config: Rc<Config>, role: Role, peer: IpAddr) -> Session {
        Session {
            config,
            role,
            peer,
            tls: None,
            helo: None,
            transaction: None,
            errors: 0,
        }
    }

    /// Writes the 220 greeting.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        Reply::new(220, None, format!("{} ESMTP secmx", self.config.hostname)).write_to(out);
    }

    /// Handles one command line (without CRLF): writes the reply, says what to do next.
    pub fn command(&mut self, line: &[u8], policy: &RecipientPolicy, out: &mut Vec<u8>) -> Action {
        let (reply, action) = match parse_command(line) {
            Ok(command) => self.dispatch(command, policy),
            Err(error) => (error.reply(), Action::Continue),
        };
        self.respond(reply, action, out)
    }

    /// Answers a command line longer than 512 octets, which the I/O layer skipped up to its CRLF.
    pub fn line_too_long(&mut self, out: &mut Vec<u8>) -> Action {
        self.respond(LINE_TOO_LONG, Action::Continue, out)
    }

    /// Writes the 421 sent when the client stayed silent too long.
    pub fn timed_out(&self, out: &mut Vec<u8>) {
        let text = format!(
            "{} Timeout exceeded, closing connection",
            self.config.hostname
        );
        Reply::new(421, Some(Status::new(4, 4, 2)), text).write_to(out);
    }

    /// True once the client greeted with EHLO or HELO (since the last STARTTLS).
    pub fn has_helo(&self) -> bool {
        self.helo.is_some()
    }

    /// The client's address.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// TLS version and cipher suite, `none` before STARTTLS.
    pub fn tls(&self) -> &str {
        self.tls.as_deref().unwrap_or("none")
    }

    /// The decoder for the message that follows a 354.
    pub fn data_decoder(&self) -> DataDecoder {
        DataDecoder::new(
            self.config.smtp.max_message_size,
            self.config.smtp.bare_newline,
        )
    }

    /// The `Received:` header to put in front of the message now being received.
    pub fn received_header(&self) -> String {
        let helo = self.helo.as_ref();
        Trace {
            helo: helo.map_or("unknown", |h| h.name.as_str()),
            peer: self.peer,
            hostname: &self.config.hostname,
            extended: helo.is_some_and(|h| h.extended),
            tls: self.tls.as_deref(),
            time: unix_now(),
        }
        .header()
    }

    /// Judges the decoded message: either the envelope to queue, or a refusal written to `out`.
    /// The transaction ends either way.
    pub fn end_of_data(&mut self, verdict: Result<u64, DataError>, out: &mut Vec<u8>) -> Action {
        let Some(transaction) = self.transaction.take() else {
            return self.respond(MAIL_FIRST, Action::Continue, out);
        };
        if let Err(error) = verdict {
            return self.respond(error.reply(), Action::Continue, out);
        }
        let helo = self.helo.as_ref().map_or(String::new(), |h| h.name.clone());
        Action::Submit(Envelope {
            reverse_path: transaction.reverse_path,
            recipients: transaction.recipients,
            received_at: unix_now(),
            peer: ip_text(self.peer),
            helo,
            tls: self.tls().to_string(),
        })
    }

    /// Reports the spool's answer to the client: `250` with the queue id only once it is durable.
    pub fn submitted(&mut self, result: Result<QueueId, SubmitError>, out: &mut Vec<u8>) {
        match result {
            Ok(queue_id) => {
                let text = format!("Ok: queued as {queue_id}");
                Reply::new(250, Some(Status::new(2, 0, 0)), text).write_to(out);
            }
            Err(error) => error.reply().write_to(out),
        }
    }

    /// Forgets everything learnt before the TLS handshake (RFC 3207 section 4.2).
    pub fn tls_started(&mut self, tls: String) {
        self.tls = Some(tls);
        self.helo = None;
        self.transaction = None;
    }

    fn respond(&mut self, reply: Reply, action: Action, out: &mut Vec<u8>) -> Action {
        reply.write_to(out);
        // Deferring the excess recipients is the limit working as intended, not a client error.
        let counts = reply.code >= 400 && reply != TOO_MANY_RECIPIENTS;
        if counts {
            self.errors += 1;
            if self.errors > self.config.smtp.max_errors {
                let text = format!(
                    "{} Too many errors, closing connection",
                    self.config.hostname
                );
                Reply::new(421, Some(Status::new(4, 7, 0)), text).write_to(out);
                return Action::Quit;
            }
        }
        action
    }

    fn dispatch(&mut self, command: Command<'_>, policy: &RecipientPolicy) -> (Reply, Action) {
        let continue_with = |reply| (reply, Action::Continue);
        match command {
            Command::Ehlo(name) => continue_with(self.hello(name, true)),
            Command::Helo(name) => continue_with(self.hello(name, false)),
            Command::Mail {
                reverse_path,
                params,
            } => continue_with(self.mail(reverse_path, params)),
            Command::Rcpt {
                forward_path,
                params,
            } => continue_with(self.rcpt(forward_path, params, policy)),
            Command::Data => self.data(),
            Command::Rset => {
                self.transaction = None;
                continue_with(OK)
            }
            Command::Noop => continue_with(OK),
            Command::Vrfy => continue_with(VRFY),
            Command::Help => continue_with(HELP),
            Command::Quit => {
                let text = format!("{} closing connection", self.config.hostname);
                (
                    Reply::new(221, Some(Status::new(2, 0, 0)), text),
                    Action::Quit,
                )
            }
            Command::StartTls if self.tls.is_some() => continue_with(TLS_ACTIVE),
            Command::StartTls => (START_TLS, Action::StartTls),
        }
    }

    /// True when a SOR listener must refuse mail commands because TLS is not up yet.
    fn needs_tls(&self) -> bool {
        self.role == Role::SecureOnlyReceiver && self.tls.is_none()
    }

    fn hello(&mut self, name: &str, extended: bool) -> Reply {
        self.transaction = None;
        self.helo = Some(Helo {
            name: name.to_string(),
            extended,
        });
        let hostname = &self.config.hostname;
        if !extended {
            return Reply::new(250, None, hostname.clone());
        }
        let mut text = format!(
            "{hostname}\nPIPELINING\nSIZE {}\n8BITMIME\nENHANCEDSTATUSCODES",
            self.config.smtp.max_message_size
        );
        if self.tls.is_none() {
            text.push_str("\nSTARTTLS");
        }
        Reply::new(250, None, text)
    }

    fn mail(&mut self, reverse_path: Path<'_>, params: &str) -> Reply {
        if self.needs_tls() {
            return TLS_REQUIRED;
        }
        if self.helo.is_none() {
            return HELLO_FIRST;
        }
        if self.transaction.is_some() {
            return NESTED_MAIL;
        }
        if let Err(reply) = self.check_mail_parameters(params) {
            return reply;
        }
        self.transaction = Some(Transaction {
            reverse_path: reverse_path.mailbox().to_string(),
            recipients: Vec::new(),
        });
        SENDER_OK
    }

    /// SIZE (RFC 1870) and BODY (RFC 6152) are understood; anything else is refused.
    fn check_mail_parameters(&self, params: &str) -> Result<(), Reply> {
        for param in parameters(params) {
            match param.map_err(|e: ParseError| e.reply())? {
                (keyword, Some(value)) if keyword.eq_ignore_ascii_case("SIZE") => {
                    let size: u64 = value.parse().map_err(|_| BAD_SIZE)?;
                    if size > self.config.smtp.max_message_size {
                        return Err(MESSAGE_TOO_BIG);
                    }
                }
                (keyword, Some(value))
                    if keyword.eq_ignore_ascii_case("BODY")
                        && (value.eq_ignore_ascii_case("7BIT")
                            || value.eq_ignore_ascii_case("8BITMIME")) => {}
                _ => return Err(UNSUPPORTED_PARAMETER),
            }
        }
        Ok(())
    }

    fn rcpt(&mut self, forward_path: Path<'_>, params: &str, policy: &RecipientPolicy) -> Reply {
        if self.needs_tls() {
            return TLS_REQUIRED;
        }
        let max_recipients = self.config.smtp.max_recipients;
        let Some(transaction) = self.transaction.as_mut() else {
            return MAIL_FIRST;
        };
        if transaction.recipients.len() >= max_recipients {
            return TOO_MANY_RECIPIENTS;
        }
        if !params.is_empty() {
            return UNSUPPORTED_PARAMETER;
        }
        if let Err(reply) = policy.check_recipient(&forward_path, self.peer) {
            return reply;
        }
        let mailbox = if forward_path.is_bare_postmaster() {
            // RFC 5321 section 4.1.1.3: the postmaster of this host.
            let domain = self.config.relay.local_domains.first();
            format!("postmaster@{}", domain.unwrap_or(&self.config.hostname))
        } else {
            forward_path.mailbox().to_string()
        };
        transaction.recipients.push(mailbox);
        RECIPIENT_OK
    }

    fn data(&mut self) -> (Reply, Action) {
        if self.needs_tls() {
            return (TLS_REQUIRED, Action::Continue);
        }
        match &self.transaction {
            None => (MAIL_FIRST, Action::Continue),
            Some(t) if t.recipients.is_empty() => (NO_RECIPIENTS, Action::Continue),
            Some(_) => (START_DATA, Action::EnterData),
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

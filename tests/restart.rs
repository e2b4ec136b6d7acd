//! Durability: mail acknowledged with 250 survives a SIGKILL of the daemon and is delivered
//! after restart.

mod common;

use common::*;

#[test]
fn secmx_killed_with_sigkill_while_holding_queued_mail_delivers_it_after_restart() {
    let dir = TempDir::new("sigkill");
    let mail_c = Maildir::new(&dir.join("mail-c"));
    let next_hop = addr(7, 20, 2600);
    let mut sender = Secmx::start(
        dir.path(),
        "sender",
        SecmxConfig::new("gw.a.test", addr(7, 53, 53))
            .listener(addr(7, 10, 2525), "ber")
            .next_hop_domain("c.test", next_hop),
    );

    submit(
        sender.address(),
        "alice@a.test",
        "dave@c.test",
        "queued-across-sigkill",
    );
    sender.wait_for_event("deferred", "dave@c.test");
    sender.kill();

    let receiver = Secmx::start(
        dir.path(),
        "receiver",
        SecmxConfig::new("mx.c.test", addr(7, 53, 53))
            .listener(next_hop, "ber")
            .maildir_domain("c.test", mail_c.root()),
    );
    sender.restart();

    let messages = mail_c.wait_for("dave", 1, &[&sender, &receiver]);
    with_subject(&messages, "queued-across-sigkill");
    assert_eq!(messages.len(), 1, "delivered once: {messages:#?}");
}

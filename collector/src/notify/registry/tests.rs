//! The channel registry on its own: persistence, one namespace with the
//! config file, reloads, write-only fields, and what reaches the dispatcher.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;
use crate::notify::Backoff;

const SECRET: &str = "hmac-secret-0123456789";
const TOKEN_URL: &str = "https://hooks.example.test/T0KEN-in-the-path";

fn webhook(name: &str) -> RawChannel {
    RawChannel {
        name: name.into(),
        kind: "webhook".into(),
        url: Some(TOKEN_URL.into()),
        secret: Some(SECRET.into()),
        headers: [("Authorization".into(), "Bearer H3ADER".into())].into(),
        tags: vec!["db".into()],
        ..Default::default()
    }
}

fn slack(name: &str) -> RawChannel {
    RawChannel {
        name: name.into(),
        kind: "slack".into(),
        url: Some("https://hooks.slack.test/services/SL4CK".into()),
        ..Default::default()
    }
}

fn names(r: &ChannelRegistry) -> Vec<(String, Origin)> {
    r.list()
        .into_iter()
        .map(|e| (e.raw.name, e.origin))
        .collect()
}

/// A dispatcher whose reports go nowhere: the tests look at its channels.
fn dispatcher() -> Dispatcher {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    Dispatcher::new(Vec::new(), Backoff::default(), tx)
}

fn dispatched(d: &Dispatcher) -> Vec<String> {
    let mut n: Vec<String> = d.channels().into_iter().map(|c| c.name).collect();
    n.sort();
    n
}

#[test]
fn api_channels_survive_a_reopen_in_a_0600_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(API_FILE);
    let r = ChannelRegistry::open(&[], Some(&path), None).unwrap();
    let (e, created) = r.upsert(webhook("ops"), &[]).unwrap();
    assert!(created);
    assert_eq!(e.origin, Origin::Api);
    let (_, created) = r.upsert(slack("chat"), &[]).unwrap();
    assert!(created);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}: the file holds secrets");
    // No temp file left behind.
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1);

    let again = ChannelRegistry::open(&[], Some(&path), None).unwrap();
    assert_eq!(
        names(&again),
        [
            ("chat".to_owned(), Origin::Api),
            ("ops".to_owned(), Origin::Api)
        ]
    );
    let ops = again.get("ops").unwrap();
    assert_eq!(ops.raw, webhook("ops"), "secrets included");
    assert_eq!(ops.channel, r.get("ops").unwrap().channel);

    again.delete("ops").unwrap();
    let third = ChannelRegistry::open(&[], Some(&path), None).unwrap();
    assert_eq!(names(&third), [("chat".to_owned(), Origin::Api)]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_corrupt_or_invalid_api_file_is_an_error_never_an_empty_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(API_FILE);
    std::fs::write(&path, "{\"channels\": [").unwrap();
    let err = ChannelRegistry::open(&[], Some(&path), None).err().unwrap();
    assert!(matches!(err, ChannelError::Storage { .. }), "{err}");
    std::fs::write(
        &path,
        r#"{"channels": [{"name": "x", "kind": "webhook", "url": "ftp://nope"}]}"#,
    )
    .unwrap();
    let err = ChannelRegistry::open(&[], Some(&path), None).err().unwrap();
    assert!(err.to_string().contains("url"), "{err}");
}

#[test]
fn file_and_api_channels_share_one_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(API_FILE);
    let r = ChannelRegistry::open(&[slack("from-file")], Some(&path), None).unwrap();
    // The API can neither take a file channel's name nor change or delete it.
    let err = r.upsert(webhook("from-file"), &[]).unwrap_err();
    assert!(matches!(err, ChannelError::ManagedByFile(_)), "{err}");
    let err = r.delete("from-file").unwrap_err();
    assert!(matches!(err, ChannelError::ManagedByFile(_)), "{err}");
    assert_eq!(r.get("from-file").unwrap().raw, slack("from-file"));
    assert!(!path.exists(), "nothing was written");
    let err = r.delete("nope").unwrap_err();
    assert!(matches!(err, ChannelError::NotFound(_)), "{err}");

    // A reload that brings a file channel named like an API one is refused
    // as a whole, and changes nothing.
    r.upsert(webhook("api-one"), &[]).unwrap();
    let problems = r
        .replace_file(&[slack("from-file"), slack("api-one")])
        .unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("\"api-one\"") && problems[0].contains("API channel"),
        "{problems:?}"
    );
    assert_eq!(r.get("api-one").unwrap().origin, Origin::Api);
    assert_eq!(r.list().len(), 2);

    // Nor may a restart bring one.
    drop(r);
    let err = ChannelRegistry::open(&[slack("api-one")], Some(&path), None)
        .err()
        .unwrap();
    assert!(
        matches!(err, ChannelError::Clash(ref n) if n == "api-one"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reload_replaces_the_file_channels_and_keeps_the_apis() {
    let d = dispatcher();
    let r = ChannelRegistry::open(&[slack("a"), slack("b")], None, Some(d.clone())).unwrap();
    assert_eq!(dispatched(&d), ["a", "b"], "open hands over the file's");
    r.upsert(webhook("api"), &[]).unwrap();
    assert_eq!(dispatched(&d), ["a", "api", "b"]);
    r.replace_file(&[slack("b"), slack("c")]).unwrap();
    assert_eq!(
        names(&r),
        [
            ("api".to_owned(), Origin::Api),
            ("b".to_owned(), Origin::File),
            ("c".to_owned(), Origin::File),
        ]
    );
    assert_eq!(dispatched(&d), ["api", "b", "c"]);
    // An invalid file changes nothing.
    let mut bad = slack("d");
    bad.url = None;
    assert!(r.replace_file(&[bad]).is_err());
    assert_eq!(dispatched(&d), ["api", "b", "c"]);
    r.delete("api").unwrap();
    assert_eq!(dispatched(&d), ["b", "c"]);
    r.replace_file(&[]).unwrap();
    assert!(dispatched(&d).is_empty());
    // Let the ended workers go.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[test]
fn every_problem_of_a_definition_comes_back_and_nothing_changes() {
    let r = ChannelRegistry::default();
    let bad = RawChannel {
        name: "hook".into(),
        kind: "webhook".into(),
        url: Some("ftp://x".into()),
        secret: Some("short".into()),
        timeout: Some("0s".into()),
        to: vec!["ops@example.test".into()],
        ..Default::default()
    };
    let ChannelError::Invalid(problems) = r.upsert(bad, &[]).unwrap_err() else {
        panic!()
    };
    assert_eq!(problems.len(), 4, "{problems:?}");
    for field in ["url", "secret", "timeout", "to"] {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&format!("channel \"hook\".{field}: "))),
            "{field}: {problems:?}"
        );
    }
    assert!(r.list().is_empty());
}

#[test]
fn a_replacement_that_leaves_secrets_out_keeps_the_stored_ones() {
    let r = ChannelRegistry::default();
    r.upsert(webhook("ops"), &[]).unwrap();
    // What a client read back: no url, secret or headers. It changes the route.
    let mut shown = r.get("ops").unwrap().raw.redacted();
    assert_eq!((shown.url.as_ref(), shown.secret.as_ref()), (None, None));
    assert!(shown.headers.is_empty());
    shown.tags = vec!["web".into()];
    let (e, created) = r
        .upsert(
            shown.clone(),
            &["url", "secret", "headers", "routing_key", "password"],
        )
        .unwrap();
    assert!(!created);
    assert_eq!(e.raw.tags, ["web"]);
    assert_eq!(e.raw.url.as_deref(), Some(TOKEN_URL));
    assert_eq!(e.raw.secret.as_deref(), Some(SECRET));
    assert_eq!(e.raw.headers["Authorization"], "Bearer H3ADER");

    // Sent as null (not left out), the secret is cleared: unsigned from now on.
    let (e, _) = r.upsert(shown.clone(), &["url", "headers"]).unwrap();
    assert_eq!(e.raw.secret, None);
    assert_eq!(e.raw.url.as_deref(), Some(TOKEN_URL));

    // A new value replaces the stored one.
    let mut rotated = shown.clone();
    rotated.secret = Some("another-secret-0123456789".into());
    let (e, _) = r.upsert(rotated, &["url", "headers"]).unwrap();
    assert_eq!(e.raw.secret.as_deref(), Some("another-secret-0123456789"));

    // Another kind inherits nothing: its url is required.
    let to_slack = RawChannel {
        name: "ops".into(),
        kind: "slack".into(),
        ..Default::default()
    };
    let ChannelError::Invalid(problems) = r.upsert(to_slack, &["url"]).unwrap_err() else {
        panic!()
    };
    assert!(problems[0].contains("url: is required"), "{problems:?}");
    // And a new channel has nothing to inherit.
    let mut fresh = shown;
    fresh.name = "fresh".into();
    let err = r.upsert(fresh, &["url"]).unwrap_err();
    assert!(err.to_string().contains("url: is required"), "{err}");
}

#[test]
fn secrets_are_write_only() {
    let raw = webhook("ops");
    assert_eq!(raw.write_only_set(), ["url", "secret", "headers"]);
    let shown = serde_json::to_string(&raw.redacted()).unwrap();
    for secret in [SECRET, "T0KEN", "H3ADER", "Authorization"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("\"tags\":[\"db\"]"), "{shown}");
    let email = RawChannel {
        name: "mail".into(),
        kind: "email".into(),
        smtp_host: Some("mx.example.test".into()),
        username: Some("portwatch".into()),
        password: Some("SMTP-PA55".into()),
        from: Some("portwatch@example.test".into()),
        to: vec!["ops@example.test".into()],
        ..Default::default()
    };
    assert_eq!(email.write_only_set(), ["password"]);
    let shown = serde_json::to_string(&email.redacted()).unwrap();
    assert!(
        !shown.contains("SMTP-PA55") && shown.contains("portwatch"),
        "{shown}"
    );
    // PagerDuty's URL is the public Events API: shown; its key is not.
    let pd = RawChannel {
        name: "pd".into(),
        kind: "pagerduty".into(),
        url: Some("https://events.pagerduty.test/v2/enqueue".into()),
        routing_key: Some("R0UT1NG".into()),
        ..Default::default()
    };
    assert_eq!(pd.write_only_set(), ["routing_key"]);
    let shown = pd.redacted();
    assert_eq!(shown.url, pd.url);
    assert_eq!(shown.routing_key, None);
    // Debug output of a registry entry never holds one either.
    let r = ChannelRegistry::default();
    r.upsert(webhook("ops"), &[]).unwrap();
    let debug = format!("{:?}", r.list());
    for secret in [SECRET, "T0KEN", "H3ADER"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
}

#[test]
fn a_failed_write_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone").join(API_FILE);
    let r = ChannelRegistry::open(&[], Some(&path), None).unwrap();
    let err = r.upsert(webhook("ops"), &[]).unwrap_err();
    assert!(matches!(err, ChannelError::Storage { .. }), "{err}");
    assert!(r.list().is_empty());
}

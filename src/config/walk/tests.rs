use super::*;

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("1000000000000000000000000000000h"), None);
    assert_eq!(parse_duration("99999999999999999999s"), None);
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("x"), None);
    assert_eq!(parse_size("256KiB"), Some(262144));
    assert_eq!(parse_size("16MiB"), Some(16 << 20));
    assert_eq!(parse_size("12"), Some(12));
    assert_eq!(parse_size("1TB"), None);
}

#[test]
fn every_error_with_line_and_path() {
    let src = "a = 1\n[t]\nx = \"y\"\nbad = true\n[[arr]]\nn = \"str\"\n[[arr]]\nn = 500\n";
    let path = Path::new("f.toml");
    let cx = Source::new(path, src);
    let doc = cx.parse().unwrap();
    let root = Table::root(&cx, &doc);
    let t = root.table("t").unwrap();
    assert_eq!(t.str("x").as_deref(), Some("y"));
    t.finish(&[]);
    for a in root.tables("arr") {
        a.int_in("n", 1..=180);
        a.finish(&[]);
    }
    root.req_str("missing");
    root.finish(&[]);
    let errs = cx.into_errors();
    let all = errs.join("\n");
    assert!(all.contains("f.toml:4:1: t.bad: unknown key"), "{all}");
    assert!(
        all.contains("f.toml:6:5: arr[0].n: expected an integer, found string"),
        "{all}"
    );
    assert!(
        all.contains("f.toml:8:5: arr[1].n: 500 is out of range 1..=180"),
        "{all}"
    );
    assert!(all.contains("missing: missing required key"), "{all}");
    assert!(all.contains("f.toml:1:1: a: unknown key"), "{all}");
    assert_eq!(errs.len(), 5, "{all}");
}

#[test]
fn syntax_errors_have_positions() {
    let cx = Source::new(Path::new("s.toml"), "a = \n[x\n");
    assert!(cx.parse().is_none());
    let errs = cx.into_errors();
    assert!(!errs.is_empty());
    assert!(errs[0].starts_with("s.toml:1:"), "{errs:?}");
}

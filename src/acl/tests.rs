use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::*;
use crate::config::IpTableRule;

fn acl(src: &str) -> Acl {
    match Acl::parse("acl.list", src, Policy::Deny) {
        Ok(a) => a,
        Err(e) => panic!("{e:?}"),
    }
}

const MON_10: LocalTime = LocalTime {
    weekday: 0,
    minute: 600,
};

/// (rules, request, expected line or 0 for the default policy (deny))
fn run_table(rules: &str, cases: &[(Request<'_>, usize)]) {
    let a = acl(rules);
    for (req, want) in cases {
        let d = a.check(req);
        let n = a.check_naive(req);
        assert_eq!(d, n, "index and reference disagree on {req:?}");
        let got = d.line.unwrap_or(0);
        assert_eq!(got, *want, "{req:?} decided by {}", a.explain(&d));
        if *want == 0 {
            assert!(!d.allow);
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn secure_gateway_forms() {
    let rules = "# comment\n\
        acl deny 10.0.0.5:\n\
        acl allow 127.0.0.1:6379  # redis\n\
        acl allow :22\n\
        acl allow [::1]:80\n\
        acl deny localhost:80\n\
        acl allow LocalHost:\n";
    run_table(
        rules,
        &[
            (Request::new("127.0.0.1", 6379), 3),
            (Request::new("10.0.0.5", 22), 2),
            (Request::new("anything", 22), 4),
            (Request::new("::1", 80), 5),
            (Request::new("localhost", 80), 6),
            (Request::new("LOCALHOST.", 81), 7),
            (Request::new("127.0.0.1", 6380), 0),
            // An address rule matches the resolved address of a name.
            (Request::new("redis.local", 6379).addr(ip("127.0.0.1")), 3),
            (Request::new("meta", 443).addr(ip("10.0.0.5")), 2),
            // IPv4-mapped IPv6 is the same host.
            (Request::new("::ffff:10.0.0.5", 1), 2),
        ],
    );
    let open = Acl::parse("f", "", Policy::Allow).unwrap();
    assert!(open.check(&Request::new("x", 1)).allow);
}

#[test]
fn extensions() {
    let rules = "acl allow 10.1.0.0/16:8000-8999\n\
        acl allow 192.168.1.10-192.168.1.20:443\n\
        acl allow *.db.corp.example:5432\n\
        acl allow [2001:db8::/32]:443\n\
        acl deny 169.254.169.254:\n\
        acl allow 10.2.0.7:5432 from 203.0.113.0/24\n\
        acl allow 10.2.0.8:3389 during mon-fri 08:00-18:00\n\
        acl allow 10.2.0.9:1-100 from [2001:db8::1]:1000-2000\n\
        acl allow *:7000\n\
        acl allow [fe80::1-fe80::ff]:\n";
    let sat = LocalTime {
        weekday: 5,
        minute: 600,
    };
    run_table(
        rules,
        &[
            (Request::new("10.1.255.255", 8000), 1),
            (Request::new("10.1.0.1", 8999), 1),
            (Request::new("10.1.0.1", 9000), 0),
            (Request::new("10.2.0.1", 8500), 0),
            (Request::new("192.168.1.10", 443), 2),
            (Request::new("192.168.1.20", 443), 2),
            (Request::new("192.168.1.21", 443), 0),
            (Request::new("a.db.corp.example", 5432), 3),
            (Request::new("x.y.DB.corp.example", 5432), 3),
            (Request::new("db.corp.example", 5432), 0),
            (Request::new("adb.corp.example", 5432), 0),
            (Request::new("2001:db8:ffff::1", 443), 4),
            (Request::new("2001:db9::1", 443), 0),
            (Request::new("metadata", 80).addr(ip("169.254.169.254")), 5),
            (
                Request::new("10.2.0.7", 5432).from(sa("203.0.113.9:5555")),
                6,
            ),
            (
                Request::new("10.2.0.7", 5432).from(sa("198.51.100.1:5555")),
                0,
            ),
            // No known caller: `from` rules never match.
            (Request::new("10.2.0.7", 5432), 0),
            (Request::new("10.2.0.8", 3389).at(MON_10), 7),
            (Request::new("10.2.0.8", 3389).at(sat), 0),
            (
                Request::new("10.2.0.8", 3389).at(LocalTime {
                    weekday: 0,
                    minute: 18 * 60,
                }),
                0,
            ),
            (
                Request::new("10.2.0.9", 50).from(sa("[2001:db8::1]:1500")),
                8,
            ),
            (
                Request::new("10.2.0.9", 50).from(sa("[2001:db8::1]:999")),
                0,
            ),
            (Request::new("anything", 7000), 9),
            (Request::new("fe80::80", 1), 10),
        ],
    );
}

#[test]
fn first_match_precedence() {
    // Earlier rules win across buckets: any-host vs name vs wildcard vs address.
    let rules = "acl deny :9\n\
        acl allow *.corp:9-10\n\
        acl deny a.corp:10\n\
        acl allow a.corp:\n\
        acl deny 10.0.0.0/8:\n\
        acl allow 10.0.0.1:\n\
        acl allow 10.0.0.0/8:80 during 00:00-24:00\n";
    run_table(
        rules,
        &[
            (Request::new("a.corp", 9), 1),
            (Request::new("a.corp", 10), 2),
            (Request::new("a.corp", 11), 4),
            (Request::new("b.corp", 11), 0),
            (Request::new("10.0.0.1", 80), 5),
            // Name and address both match: the earlier rule decides.
            (Request::new("a.corp", 443).addr(ip("10.0.0.1")), 4),
            (Request::new("b.corp", 443).addr(ip("10.0.0.1")), 5),
        ],
    );
    // Removal: `no acl` drops the latest identical earlier rule.
    let a = acl("acl allow x:1\nacl deny x:1\nacl allow x:1\nno acl allow x:1\nno acl deny  y:2\n");
    assert_eq!(a.rules.len(), 2);
    assert_eq!(a.check(&Request::new("x", 1)).line, Some(1));
    assert_eq!(
        a.rules.iter().map(|r| r.line).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(a.unmatched_removals, vec![(5, "acl deny y:2".to_string())]);
}

#[test]
fn only_allowed_candidates_are_returned() {
    let a = acl("acl deny 127.0.0.2:\nacl allow db.corp:5432\nacl allow 127.0.0.4:5432\n");
    let addrs: Vec<SocketAddr> = ["127.0.0.2:5432", "127.0.0.3:5432", "127.0.0.2:5432"]
        .iter()
        .map(|s| sa(s))
        .collect();
    let req = Request::new("db.corp", 5432);
    assert_eq!(
        a.allowed_addrs(&req, &addrs),
        Ok(vec![sa("127.0.0.3:5432")])
    );
    let other = Request::new("other.corp", 5432);
    assert_eq!(
        a.allowed_addrs(&other, &addrs).unwrap_err().line,
        Some(1),
        "all denied: the first candidate's deciding rule"
    );
    assert_eq!(
        a.allowed_addrs(&other, &[sa("127.0.0.4:5432"), sa("127.0.0.9:5432")]),
        Ok(vec![sa("127.0.0.4:5432")])
    );
}

#[test]
fn paths_apply_to_http_requests_only() {
    let rules = "acl deny localhost:80/my/api/admin\n\
        acl allow localhost:80/my/api\n\
        acl allow localhost:81/\n";
    run_table(
        rules,
        &[
            (Request::new("localhost", 80).path("/my/api"), 2),
            (Request::new("localhost", 80).path("/my/api/v1?x=1"), 2),
            (Request::new("localhost", 80).path("/my/apix"), 0),
            (Request::new("localhost", 80).path("/other"), 0),
            (Request::new("localhost", 80).path("/my/api/admin/users"), 1),
            // Traversal and escapes are normalised before matching.
            (Request::new("localhost", 80).path("/my/api/../secret"), 0),
            (Request::new("localhost", 80).path("/my/%61pi//x"), 2),
            (Request::new("localhost", 80).path("/my/api/./admin"), 1),
            // A TCP destination's stream could carry any path: a deny rule's path matches
            // it, an allow rule's does not. What carries no request (a proxy hop) neither.
            (Request::new("localhost", 80).opaque(), 1),
            (Request::new("localhost", 81).opaque(), 0),
            (Request::new("localhost", 80), 0),
            (Request::new("localhost", 81).path("/anything"), 3),
        ],
    );
    // The gateway can't step around a path deny by defining the same port as TCP.
    run_table(
        "acl deny web:80/admin\nacl allow web:80\n",
        &[
            (Request::new("web", 80).path("/admin/x"), 1),
            (Request::new("web", 80).path("/public"), 2),
            (Request::new("web", 80).opaque(), 1),
            (Request::new("web", 80), 2),
        ],
    );
    assert_eq!(normalize_path("/a/b/../../../c"), "/c");
    assert_eq!(normalize_path(""), "/");
    assert_eq!(normalize_path("/a/b/"), "/a/b/");
    assert_eq!(normalize_path("/a/%2F/b"), "/a/%2F/b");
    assert_eq!(normalize_path("/é/%7e"), "/%C3%A9/~");
    // One spelling for what servers decode alike: a rule can't be dodged by another one.
    for p in ["/café", "/caf%c3%a9", "/caf%C3%A9", "/caf%C3%a9"] {
        assert_eq!(normalize_path(p), "/caf%C3%A9", "{p}");
    }
    for p in ["/v1/x:delete", "/v1/x%3adelete", "/v1/x%3Adelete"] {
        assert_eq!(normalize_path(p), "/v1/x:delete", "{p}");
    }
    for p in ["/a{b", "/a%7bb", "/a%7Bb"] {
        assert_eq!(normalize_path(p), "/a%7Bb", "{p}");
    }
    // What would change the path's shape stays as it was.
    assert_eq!(normalize_path("/a%2fb%3F%23%25"), "/a%2Fb%3F%23%25");
    assert_eq!(normalize_path("/a;b"), "/a;b");
    run_table(
        "acl deny web:80/café\nacl allow web:80\n",
        &[
            (Request::new("web", 80).path("/caf%c3%a9/menu"), 1),
            (Request::new("web", 80).path("/caf%C3%A9"), 1),
            (Request::new("web", 80).path("/café"), 1),
            (Request::new("web", 80).path("/cafe"), 2),
        ],
    );
}

#[test]
fn time_windows() {
    let w = |s: &str| {
        acl(&format!("acl allow h:1 during {s}")).rules[0]
            .during
            .unwrap()
    };
    let at = |d: u8, h: u16, m: u16| LocalTime {
        weekday: d,
        minute: h * 60 + m,
    };
    let office = w("mon-fri 08:00-18:00");
    assert!(office.matches(at(0, 8, 0)));
    assert!(office.matches(at(4, 17, 59)));
    assert!(!office.matches(at(4, 18, 0)));
    assert!(!office.matches(at(5, 12, 0)));
    let night = w("fri 22:00-06:00");
    assert!(night.matches(at(4, 23, 0)));
    assert!(
        night.matches(at(5, 5, 59)),
        "after midnight belongs to Friday's window"
    );
    assert!(
        !night.matches(at(4, 5, 0)),
        "Friday morning is Thursday night's"
    );
    let weekend = w("sat,sun 00:00-24:00");
    assert!(weekend.matches(at(6, 23, 59)));
    assert!(!weekend.matches(at(0, 0, 0)));
    let wrap = w("fri-mon 10:00-11:00");
    assert_eq!(wrap.days, 0b111_0001);
    assert_eq!(w("10:00-11:00").days, 0x7f);
    assert_eq!(w("Daily 10:00-11:00").days, 0x7f);
    assert_eq!(w("monday,Wed 10:00-11:00").days, 0b101);
}

#[test]
fn every_error_with_line_and_column() {
    let src = "acl allow 1.2.3.4:80\n\
        acl permit x:1\n  \
        acl allow nocolon\n\
        acl allow h:99999\n\
        foo\n\
        acl allow 10.0.0.0/33:1\n\
        acl allow a*b.c:1\n\
        acl allow 2001:db8::1:443\n\
        acl allow 10.0.0.9-10.0.0.1:1\n\
        acl allow h:1 from somehost\n\
        acl allow h:1 during someday 10:00-11:00\n\
        acl allow h:1 during mon 10:00-10:00\n\
        acl allow h:1 during mon 25:00-26:00\n\
        acl allow h:1 from 1.2.3.4 from 1.2.3.5\n\
        acl allow h:1 extra\n\
        acl allow h:20-10\n\
        acl allow 999.1.1.1:1\n\
        acl\n\
        no acl allow\n\
        acl allow [::1:1\n";
    let errs = Acl::parse("acl.list", src, Policy::Deny)
        .unwrap_err()
        .messages();
    let want: &[(&str, &str)] = &[
        (
            "acl.list:2:5:",
            "expected `allow` or `deny`, found `permit`",
        ),
        ("acl.list:3:13:", "expected HOST:PORT"),
        ("acl.list:4:13:", "bad port `99999`"),
        (
            "acl.list:5:1:",
            "expected `acl allow|deny HOST:PORT`, found `foo`",
        ),
        ("acl.list:6:11:", "bad CIDR block `10.0.0.0/33`"),
        ("acl.list:7:11:", "only allowed as a leading `*.`"),
        ("acl.list:8:11:", "IPv6 addresses go in brackets"),
        ("acl.list:9:11:", "low end first"),
        ("acl.list:10:20:", "not the name `somehost`"),
        ("acl.list:11:22:", "bad days `someday`"),
        ("acl.list:12:26:", "empty time window"),
        ("acl.list:13:26:", "bad time window"),
        ("acl.list:14:28:", "`from` given twice"),
        ("acl.list:15:15:", "unexpected `extra`"),
        ("acl.list:16:13:", "bad port range `20-10`"),
        ("acl.list:17:11:", "bad IP address `999.1.1.1`"),
        ("acl.list:18:4:", "expected `allow` or `deny` after `acl`"),
        ("acl.list:19:13:", "expected HOST:PORT"),
        ("acl.list:20:11:", "expected HOST:PORT"),
    ];
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    for (e, (pre, msg)) in errs.iter().zip(want) {
        assert!(e.starts_with(pre) && e.contains(msg), "{e} !~ {pre} {msg}");
    }
    assert!(parse_rule("acl allow h:1").is_ok());
    assert!(parse_rule("no acl allow h:1").is_err());
    assert!(parse_rule("acl allow h:0")
        .unwrap_err()
        .to_string()
        .starts_with("column 13: bad port"));
}

#[test]
fn lint_finds_shadowed_overlapping_and_dead_removals() {
    let a = acl("acl allow 10.0.0.0/8:\n\
        acl allow 10.1.2.3:443\n\
        acl deny 10.1.2.0/24:80-90\n\
        acl deny :22\n\
        acl allow *.corp:22\n\
        acl allow h:80/api\n\
        acl deny h:80/api/admin\n\
        no acl allow nothing:1\n\
        acl allow 192.168.0.1:1 from 10.0.0.0/8\n\
        acl deny 192.168.0.1:1 from 10.1.0.0/16\n");
    let f = lint(&a);
    let lines: Vec<usize> = f.iter().map(|f| f.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 7, 8, 10], "{f:#?}");
    assert!(f[0].message.contains("can never match: line 1"), "{f:#?}");
    assert!(f[1].message.contains("can never match: line 1"), "{f:#?}");
    assert!(f[2].message.contains("overlaps line 1"), "{f:#?}");
    assert!(f[3].message.contains("can never match: line 4"), "{f:#?}");
    assert!(f[4].message.contains("can never match: line 6"), "{f:#?}");
    assert!(f[5].message.contains("removes nothing"), "{f:#?}");
    assert!(f[6].message.contains("can never match: line 9"), "{f:#?}");
    let b = acl("acl deny 169.254.169.254:\nacl allow :443\n");
    let f = lint(&b);
    assert_eq!(f.len(), 1);
    assert!(f[0].message.contains("overlaps line 1"), "{f:#?}");
    assert!(lint(&acl("acl allow a:1\nacl deny b:1\n")).is_empty());
}

#[test]
fn large_rule_sets_use_the_index() {
    // 10,000 single-port rules on one address: a port index, not a 10,000-long scan.
    let mut src = String::new();
    for p in 1..=10_000u32 {
        src.push_str(&format!(
            "acl {} 10.0.0.1:{p}\n",
            if p % 2 == 0 { "allow" } else { "deny" }
        ));
    }
    src.push_str("acl allow 10.0.0.0/8:\n");
    let a = acl(&src);
    for p in [1u16, 2, 9_999, 10_000, 10_001, 65_535] {
        let r = Request::new("10.0.0.1", p);
        assert_eq!(a.check(&r), a.check_naive(&r), "port {p}");
    }
    assert_eq!(
        a.check(&Request::new("10.0.0.1", 20_000)).line,
        Some(10_001)
    );
}

// ---- property test: the index agrees with the top-down reference ----

fn host_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("*".to_string()),
        prop::sample::select(vec!["a", "b", "c.x", "d.c.x", "x"]).prop_map(String::from),
        prop::sample::select(vec!["*.x", "*.c.x"]).prop_map(String::from),
        (0u8..24).prop_map(|o| format!("10.0.0.{o}")),
        (0u8..24, 28u8..=32).prop_map(|(o, l)| format!("10.0.0.{o}/{l}")),
        (0u8..24, 0u8..8).prop_map(|(o, w)| format!("10.0.0.{o}-10.0.0.{}", o + w)),
        Just("[::ffff:10.0.0.0/124]".to_string()),
        Just("[2001:db8::1-2001:db8::9]".to_string()),
    ]
}

fn ports_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (1u16..12).prop_map(|p| p.to_string()),
        (1u16..12, 0u16..5).prop_map(|(p, w)| format!("{p}-{}", p + w)),
    ]
}

prop_compose! {
    fn rule_strategy()(
        allow in any::<bool>(),
        host in host_strategy(),
        ports in ports_strategy(),
        path in prop::option::weighted(0.2, prop::sample::select(vec!["/", "/a", "/a/b", "/b/"])),
        from in prop::option::weighted(0.15, prop::sample::select(vec![
            "192.0.2.0/30", "192.0.2.1", "192.0.2.1:5-9", "[2001:db8::/126]:1-3"])),
        during in prop::option::weighted(0.15, prop::sample::select(vec![
            "mon-fri 08:00-18:00", "sat 22:00-02:00", "daily 00:00-12:00"])),
    ) -> String {
        let mut s = format!("acl {} {host}:{ports}{}", if allow { "allow" } else { "deny" }, path.unwrap_or(""));
        if let Some(f) = from { s.push_str(" from "); s.push_str(f); }
        if let Some(d) = during { s.push_str(" during "); s.push_str(d); }
        s
    }
}

#[derive(Debug, Clone)]
struct Req {
    host: String,
    addr: Option<IpAddr>,
    port: u16,
    path: Option<&'static str>,
    from: Option<SocketAddr>,
    at: (u8, u16),
}

prop_compose! {
    fn req_strategy()(
        host in prop::sample::select(vec!["a", "B", "c.x", "d.c.x", "e.d.c.x", "x", "y.x", "10.0.0.3"]),
        addr in prop::option::weighted(0.8, prop_oneof![
            (0u8..26).prop_map(|o| IpAddr::from([10, 0, 0, o])),
            (0u16..12).prop_map(|o| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, o])),
        ]),
        port in 1u16..18,
        path in prop::option::weighted(0.4, prop::sample::select(vec!["/", "/a", "/a/b/c", "/ab", "/b/x"])),
        from in prop::option::weighted(0.6, prop_oneof![
            (0u8..6, 1u16..12).prop_map(|(o, p)| SocketAddr::from(([192, 0, 2, o], p))),
            (0u16..6, 1u16..5).prop_map(|(o, p)| SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, o], p))),
        ]),
        day in 0u8..7,
        minute in 0u16..1440,
    ) -> Req {
        Req { host: host.to_string(), addr, port, path, from, at: (day, minute) }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn index_agrees_with_top_down(
        rules in prop::collection::vec(rule_strategy(), 0..80),
        reqs in prop::collection::vec(req_strategy(), 1..40),
        default_allow in any::<bool>(),
    ) {
        let policy = if default_allow { Policy::Allow } else { Policy::Deny };
        let a = Acl::parse("p", &rules.join("\n"), policy).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(a.rules.len(), rules.len());
        for r in &reqs {
            let mut q = Request::new(&r.host, r.port).at(LocalTime { weekday: r.at.0, minute: r.at.1 });
            q.addr = r.addr.or(q.addr);
            q.path = r.path;
            q.from = r.from;
            prop_assert_eq!(a.check(&q), a.check_naive(&q), "request {:?}\nrules:\n{}", r, rules.join("\n"));
        }
    }

    #[test]
    fn parser_never_panics(s in "\\PC{0,80}") {
        let _ = Acl::parse("f", &s, Policy::Deny);
        let _ = parse_rule(&s);
        let _ = normalize_path(&s);
    }

    /// What is forwarded is judged again as the same path: the normal form is a fixed point,
    /// so the endpoint can't be handed a path that means something else to the ACL.
    #[test]
    fn the_judged_path_is_its_own_normal_form(
        s in "/(%25|%2[eEfF]|%3[aAbBfF]|%4[01]|%[cC]3%[aA]9|%[0-9a-fA-F]{2}|[a-fA-F0-9:@!$&'()*+,=._~é{}|^ ;-]|/){0,40}"
    ) {
        let once = normalize_path(&s);
        prop_assert_eq!(normalize_path(&once), once.clone(), "from {:?}", s);
        if let Ok(forwarded) = request_path(&s) {
            prop_assert_eq!(request_path(&forwarded), Ok(forwarded.clone()), "from {:?}", s);
            prop_assert_eq!(normalize_path(&forwarded), forwarded.clone());
        }
    }
}

#[test]
fn private_destinations_admit_only_listed_callers() {
    let rules = vec![
        IpTableRule::new("192.0.2.1-192.0.2.9", "", "a").unwrap(),
        IpTableRule::new("", "5000:5999", "b").unwrap(),
    ];
    assert!(caller_admitted(false, &[], None), "not private: everyone");
    assert!(caller_admitted(true, &rules, Some(sa("192.0.2.5:1"))));
    assert!(caller_admitted(true, &rules, Some(sa("198.51.100.1:5001"))));
    assert!(!caller_admitted(true, &rules, Some(sa("198.51.100.1:80"))));
    assert!(!caller_admitted(true, &rules, None), "unknown caller");
    assert!(
        !caller_admitted(true, &[], Some(sa("192.0.2.5:1"))),
        "private, no rules: nobody"
    );
}

/// `::` reaches `::1` from an IPv6 socket and is judged as `127.0.0.1` too: a deny of
/// either covers it, and `acl deny 127.0.0.0/8:` still covers both families.
#[test]
fn the_unspecified_v6_address_is_judged_as_both_loopbacks() {
    let any6: IpAddr = "::".parse().unwrap();
    let a = acl("acl allow 127.0.0.1:8080\nacl deny [::1]:\nacl allow :8080\n");
    for d in [
        a.check(&Request::new("::", 8080).addr(any6)),
        a.check_naive(&Request::new("::", 8080).addr(any6)),
    ] {
        assert!(!d.allow, "{d:?}");
    }
    let a = acl("acl deny 127.0.0.0/8:\nacl allow :8080\n");
    assert!(!a.check(&Request::new("::", 8080).addr(any6)).allow);
    let a = acl("acl allow :8080\n");
    assert!(a.check(&Request::new("::", 8080).addr(any6)).allow);
}

/// A name that does not resolve here is judged by name rules, and refused by an address deny
/// rule above the one that allows it (or any, under the default allow policy): a proxy could
/// resolve it to that address.
#[test]
fn an_unresolved_name_meets_the_address_deny_rules_above_its_rule() {
    let a = acl("acl allow 10.0.0.9:1080\nacl deny 10.0.0.0/8:\nacl allow :443\n");
    let name = Request::new("x.example", 443);
    assert_eq!(a.check(&name).line, Some(3));
    let d = a.check_unresolved(&name);
    assert_eq!((d.allow, d.line), (false, Some(2)));
    // Below the allowing rule, it can't have decided.
    let a = acl("acl allow :443\nacl deny 10.0.0.0/8:\n");
    assert_eq!(a.check_unresolved(&name), a.check(&name));
    // Only rules that match the rest of the request count.
    let a = acl("acl deny 10.0.0.0/8:22\nacl allow :443\n");
    assert!(a.check_unresolved(&name).allow);
    // The default policy allows: any matching address deny refuses the name.
    let a = match Acl::parse("acl.list", "acl deny 169.254.0.0/16:\n", Policy::Allow) {
        Ok(a) => a,
        Err(e) => panic!("{e:?}"),
    };
    let d = a.check_unresolved(&name);
    assert_eq!((d.allow, d.line), (false, Some(1)));
    // A denied name stays denied, by its own rule.
    let a = acl("acl deny x.example:\nacl deny 10.0.0.0/8:\nacl allow :\n");
    assert_eq!(a.check_unresolved(&name).line, Some(1));
}

//! The PAC script and the Rust router agree: node evaluates the generated
//! script's `FindProxyForURL` for thousands of URLs per hash mode and key
//! and the answers must equal the router's order exactly.
//!
//! Needs `node`; without it the test says so on stderr and passes
//! (`scripts/test.sh` installs nodejs, so CI always runs it).

use std::io::Write as _;
use std::process::{Command, Stdio};

use shoal_dataplane::array::{
    pac_script, Carp, Decision, DomainPattern, HashMode, KeyParts, MemberSpec, PacTargets,
    RequestTarget, Router,
};

fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// URLs with mixed-case hosts and schemes, explicit (default and other)
/// ports, queries, fragments, userinfo, percent-encoded, UTF-8 and long
/// paths, IPv6 literals.
fn urls(count: usize) -> Vec<String> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let hosts = [
        "www.Example.COM",
        "cdn.site.net",
        "API.Test.org",
        "intra.corp",
        "x.Corp",
        "direct.example",
        "[fd00::1]",
        "10.1.2.3",
        "caf\u{e9}.example",
    ];
    let schemes = ["http", "HTTP", "https", "Http", "ftp", "ws"];
    (0..count)
        .map(|i| {
            let r = next();
            let mut url = format!(
                "{}://{}{}",
                schemes[(r % 6) as usize],
                if r >> 60 == 0 { "user:pw@" } else { "" },
                hosts[(r >> 4) as usize % hosts.len()]
            );
            match r >> 12 & 7 {
                0 => url.push_str(":80"),
                1 => url.push_str(":443"),
                2 => url += &format!(":{}", r >> 16 & 0xffff),
                3 => url.push(':'),
                _ => {}
            }
            match r >> 32 & 7 {
                0 => {}
                1 => url.push('/'),
                2 => url += &format!("/a%20b/%E2%82%AC/{}", i),
                3 => url += &format!("/{}", "long-segment/".repeat(40 + (r >> 40 & 31) as usize)),
                4 => url += &format!("/caf\u{e9}/\u{1F600}/{i}"),
                _ => url += &format!("/Path/To/Item{}.HTML", r >> 36 & 0xffff),
            }
            match r >> 48 & 7 {
                0 => url += &format!("?q={}&x=%41", r >> 50),
                1 => url.push('?'),
                2 => url += "#frag",
                3 => url += &format!("?a=1#f{i}"),
                _ => {}
            }
            url
        })
        .collect()
}

fn expected(router: &Router, proxies: &[String], vip: &str, url: &str) -> String {
    let target = RequestTarget::parse_absolute(url.as_bytes()).expect("test URLs parse");
    match router.decide(&target) {
        Decision::Direct => "DIRECT".into(),
        Decision::Exception => format!("PROXY {vip}"),
        Decision::Route(order) => {
            let names: Vec<String> = order.map(|i| format!("PROXY {}", proxies[i])).collect();
            if names.is_empty() {
                "DIRECT".into()
            } else {
                names.join("; ")
            }
        }
    }
}

/// Evaluates `pac` in node for every URL; one answer per URL.
fn node_answers(pac: &str, urls: &[String]) -> Vec<String> {
    let program = format!(
        "{pac}\nconst urls = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n\
         process.stdout.write(JSON.stringify(urls.map(u => FindProxyForURL(u, ''))));\n"
    );
    let mut child = Command::new("node")
        .arg("-e")
        .arg(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    let input = format!(
        "[{}]",
        urls.iter()
            .map(|u| format!("{:?}", u))
            .collect::<Vec<_>>()
            .join(",")
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "node failed");
    let text = String::from_utf8(out.stdout).unwrap();
    // The answers hold only PROXY/DIRECT tokens, addresses and "; ".
    text.trim_start_matches("[\"")
        .trim_end_matches("\"]")
        .split("\",\"")
        .map(str::to_string)
        .collect()
}

#[test]
fn pac_and_router_pick_the_same_order_for_every_url_in_every_mode() {
    if !node_available() {
        eprintln!(
            "SKIPPED: node is not installed; the PAC script was not evaluated (install nodejs)"
        );
        return;
    }
    let urls = urls(2500);
    let names = [
        "cache1.lab.example",
        "Cache2.Lab.Example",
        "10.0.0.13",
        "squid-4",
        "p5",
        "cache17704.example.net",
        "cache62695.example.net",
    ];
    let loads = [1, 1, 2, 3, 1, 5, 1];
    let keys = [
        KeyParts::ALL,
        KeyParts::HOST,
        KeyParts::parse_list("host,port").unwrap(),
        KeyParts::parse_list("scheme,path,query").unwrap(),
    ];
    let mut checked = 0;
    for mode in [HashMode::Spec, HashMode::Squid, HashMode::Hrw] {
        for key in keys {
            for down in [None, Some(2)] {
                let specs: Vec<MemberSpec> = names
                    .iter()
                    .zip(loads)
                    .map(|(n, l)| MemberSpec::new(*n, l))
                    .collect();
                let mut carp = Carp::new(mode, key, &specs).unwrap();
                if let Some(d) = down {
                    carp.set_up(d, false);
                }
                let mut router = Router::new(carp);
                router.exceptions = vec![DomainPattern::parse("*.corp").unwrap()];
                router.direct = vec![DomainPattern::parse("direct.example").unwrap()];
                let proxies: Vec<String> = (0..names.len())
                    .map(|i| format!("10.0.0.{}:3128", 11 + i))
                    .collect();
                let vip = "10.0.0.100:3128";
                let pac = pac_script(
                    &router,
                    &PacTargets {
                        proxies: proxies.clone(),
                        exception_proxy: Some(vip.into()),
                    },
                    "test",
                );
                let answers = node_answers(&pac, &urls);
                assert_eq!(answers.len(), urls.len());
                for (url, got) in urls.iter().zip(&answers) {
                    let want = expected(&router, &proxies, vip, url);
                    assert_eq!(got, &want, "{mode:?} key {key:?} down {down:?}: {url}");
                }
                checked += urls.len();
            }
        }
    }
    eprintln!("PAC and router agree on {checked} URL evaluations");
}

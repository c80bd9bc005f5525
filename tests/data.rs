//! Log readers: real formats, malformed input named by file and line, skip-and-count.
mod common;

use seqserve::data::{read_events, read_movielens_users, read_sequences, ReadOptions, Split};
use std::io::Write;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn sequences_errors_name_file_and_line() {
    let f = file("1 10 11 12\n2 13 1$4\n3 15\n");
    let e = read_sequences(f.path(), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("{}:2:", f.path().display())), "{e}");
    assert!(e.contains("1$4"), "{e}");
    let d = read_sequences(
        f.path(),
        &ReadOptions {
            skip_malformed: true,
        },
    )
    .unwrap();
    assert_eq!(d.users.len(), 2);
    assert_eq!(d.skipped.len(), 1);
    assert_eq!(d.skipped[0].line, 2);
    let f = file("1 10\n1 11\n");
    let e = read_sequences(f.path(), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains(":2:") && e.contains("more than one line"), "{e}");
    let f = file("7\n");
    assert!(read_sequences(f.path(), &ReadOptions::default())
        .unwrap_err()
        .to_string()
        .contains(":1:"));
    let e = read_sequences(
        std::path::Path::new("/no/such/file"),
        &ReadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("/no/such/file"));
    // Keeping the first 0 users would leave nothing to train or hold out: said so, not an empty
    // catalogue further on.
    let f = file("1 10 11 12\n2 13 14\n");
    let read = |n| {
        seqserve::data::read_inputs(f.path(), None, None, n, &ReadOptions::default())
            .map(|(d, _)| d.users.len())
            .map_err(|e| e.to_string())
    };
    assert_eq!(read(Some(1)), Ok(1));
    assert!(read(Some(0))
        .unwrap_err()
        .contains("--limit-users 0 keeps no user"));
}

#[test]
fn events_grouped_and_time_ordered() {
    let f = file("u1,5,1,pv,300\nu2,6,1,buy,100\nu1,7,1,cart,200\nu1,8,1,fav,200\n");
    let d = read_events(f.path(), &ReadOptions::default()).unwrap();
    assert_eq!(d.users.len(), 2);
    let u1: Vec<_> = d.users[0]
        .events
        .iter()
        .map(|e| (e.item.as_str(), e.behaviour.as_deref().unwrap()))
        .collect();
    // Sorted by time, file order within the same second.
    assert_eq!(u1, [("7", "cart"), ("8", "fav"), ("5", "pv")]);
    let f = file("u1,5,1,pv,300\nu1,6,1,pv\nu1,7,1,pv,notatime\n");
    let e = read_events(f.path(), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains(":2:") && e.contains("expected 5 fields"), "{e}");
    let d = read_events(
        f.path(),
        &ReadOptions {
            skip_malformed: true,
        },
    )
    .unwrap();
    assert_eq!(d.skipped.iter().map(|s| s.line).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(d.n_events(), 1);
}

#[test]
fn users_table_and_errors() {
    let f = file("1::F::1::10::48067\n2::M::56::16::70072\n3::X::25::15::55117\n");
    let e = read_movielens_users(f.path(), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains(":3:") && e.contains("gender"), "{e}");
    let t = read_movielens_users(
        f.path(),
        &ReadOptions {
            skip_malformed: true,
        },
    )
    .unwrap();
    assert_eq!(t.rows["2"]["age"], "56");
    assert_eq!(t.rows.len(), 2);
}

#[test]
fn real_logs_parse_with_published_counts() {
    // Needs ../shared/data: checks the readers against the datasets' documented counts.
    if let Some(p) = common::shared_data("amazon_s3rec/Beauty.txt") {
        let d = read_sequences(&p, &ReadOptions::default()).unwrap();
        assert_eq!(d.users.len(), 22_363);
        assert_eq!(d.n_events(), 198_502);
    }
    if let Some(p) = common::shared_data("taobao_userbehavior_sample/UserBehavior.csv") {
        let d = read_events(&p, &ReadOptions::default()).unwrap();
        assert_eq!(d.users.len(), 43);
        assert_eq!(d.n_events(), 4_321);
        assert!(d.has_behaviours() && d.has_timestamps());
        let buys = d
            .users
            .iter()
            .flat_map(|u| &u.events)
            .filter(|e| e.behaviour.as_deref() == Some("buy"))
            .count();
        assert_eq!(buys, 77);
        // Temporal split works on the real timestamps.
        let s = Split::Temporal {
            cutoff: 1_512_000_000,
        };
        let n_test: usize = d.users.iter().map(|u| s.apply(u).unwrap().test.len()).sum();
        assert!(n_test > 0 && n_test < 4_321);
    }
    if let Some(p) = common::shared_data("ml-1m_diffurec/users.dat") {
        let t = read_movielens_users(&p, &ReadOptions::default()).unwrap();
        assert_eq!(t.rows.len(), 6_040);
    }
}

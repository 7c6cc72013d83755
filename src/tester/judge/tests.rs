//! Unit tests of the judge.

use super::*;

fn step(line: usize, text: &str) -> Step<KvOp> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let key = words[1].to_string();
    let item = match words[0] {
        "Insert" => KvOp::Insert {
            key,
            value: words[2].into(),
        },
        "Update" => KvOp::Update {
            key,
            value: words[2].into(),
        },
        "Remove" => KvOp::Remove { key },
        "Get" => KvOp::Get { key },
        other => panic!("not an op: {other}"),
    };
    Step {
        line,
        text: text.into(),
        item,
    }
}

fn value(v: &str) -> Answer {
    Answer::Value(Bytes::copy_from_slice(v.as_bytes()))
}

fn unavailable() -> Answer {
    Answer::Unavailable("backup down".into())
}

/// A judge with both servers up.
fn pair() -> Judge {
    let mut judge = Judge::new(false);
    judge.action(&Action::Start(PairMember::Primary));
    judge.action(&Action::Start(PairMember::Backup));
    judge
}

fn lines(judge: &Judge) -> Vec<At> {
    judge.violations().iter().map(|v| v.at).collect()
}

fn pairs(entries: &[(&str, &str)]) -> Vec<(Bytes, Bytes)> {
    entries
        .iter()
        .map(|(k, v)| {
            (
                Bytes::copy_from_slice(k.as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            )
        })
        .collect()
}

/// The classic rule: in a script with `Switch`, the belief flips at the `Switch`, before or
/// after the `Exec` that starts or stops the server, and the `Exec` itself changes nothing.
#[test]
fn switch_flips_the_belief_at_once_whatever_the_exec_order() {
    let script = crate::tester::Script::parse(
        "t",
        "Switch primary\nExec bin/start_server -p\nExec bin/start_server -b\nSwitch backup\n\
         Insert a 1\nExec bin/stop_server -b\nInsert b 2\nSwitch backup\nInsert c 3\n",
    )
    .expect("parses");
    let mut j = Judge::new(script.uses_switch);
    let mut seen = Vec::new();
    for s in &script.steps {
        match &s.item {
            crate::tester::script::Instruction::Action(action) => j.action(action),
            crate::tester::script::Instruction::Op(op) => {
                seen.push(j.up());
                let answer = if op.key() == "c" {
                    unavailable()
                } else {
                    Answer::Ok
                };
                j.operation(
                    &Step {
                        line: s.line,
                        text: s.text.clone(),
                        item: op.clone(),
                    },
                    &answer,
                );
            }
            crate::tester::script::Instruction::Block(_) => unreachable!("no block"),
        }
    }
    // Line 7 still believes the backup up (its Switch comes after): the pair's answer passes;
    // line 9 believes it down, and a refusal is what a lone primary owes.
    assert_eq!(seen, vec![Up::Both, Up::Both, Up::PrimaryOnly]);
    assert_eq!(j.violations(), &[]);
    let dump = pairs(&[("a", "1"), ("b", "2")]);
    j.dump(PairMember::Primary, Ok(&dump));
    assert_eq!(j.violations(), &[]);
}

#[test]
fn exact_answers_with_both_up_pass() {
    let mut j = pair();
    j.operation(&step(3, "Insert a 1"), &Answer::Ok);
    j.operation(&step(4, "Insert a 2"), &Answer::Exists);
    j.operation(&step(5, "Get a"), &value("1"));
    j.operation(&step(6, "Update a 3"), &Answer::Ok);
    j.operation(&step(7, "Update b 3"), &Answer::NotFound);
    j.operation(&step(8, "Remove a"), &value("3"));
    j.operation(&step(9, "Remove a"), &Answer::NotFound);
    j.operation(&step(10, "Get a"), &Answer::NotFound);
    j.operation(&step(11, "Insert c 9"), &Answer::Ok);
    let dump = pairs(&[("c", "9")]);
    j.dump(PairMember::Primary, Ok(&dump));
    j.dump(PairMember::Backup, Ok(&dump));
    assert_eq!(j.violations(), &[]);
}

#[test]
fn a_wrong_value_is_reported_on_its_line() {
    let mut j = pair();
    j.operation(&step(2, "Insert a 1"), &Answer::Ok);
    j.operation(&step(3, "Get a"), &value("2"));
    assert_eq!(lines(&j), vec![At::Line(3)]);
    let v = &j.violations()[0];
    assert_eq!(v.instruction, "Get a");
    assert_eq!(v.answer, "value \"2\"");
    assert_eq!(v.expected, "value \"1\"");
    assert_eq!(
        v.to_string(),
        "line 3: Get a: answered value \"2\"; expected value \"1\""
    );
}

#[test]
fn remove_returning_the_wrong_old_value_is_reported() {
    let mut j = pair();
    j.operation(&step(1, "Insert a old"), &Answer::Ok);
    j.operation(&step(2, "Update a new"), &Answer::Ok);
    j.operation(&step(3, "Remove a"), &value("old"));
    assert_eq!(lines(&j), vec![At::Line(3)]);
    assert_eq!(j.violations()[0].expected, "value \"new\"");
}

#[test]
fn wrong_outcomes_with_both_up_are_reported() {
    let mut j = pair();
    j.operation(&step(1, "Insert a 1"), &Answer::Exists);
    j.operation(&step(2, "Update missing 1"), &Answer::Ok);
    j.operation(&step(3, "Get other"), &Answer::Exists);
    j.operation(&step(4, "Insert b 1"), &unavailable());
    j.operation(&step(5, "Get b"), &Answer::Unreachable("down".into()));
    assert_eq!(
        lines(&j),
        vec![
            At::Line(1),
            At::Line(2),
            At::Line(3),
            At::Line(4),
            At::Line(5)
        ]
    );
    assert_eq!(j.violations()[0].expected, "ok");
    assert_eq!(j.violations()[3].expected, "ok");
}

#[test]
fn a_success_while_the_backup_is_down_is_reported() {
    let mut j = pair();
    j.operation(&step(1, "Insert a 1"), &Answer::Ok);
    j.action(&Action::Kill(PairMember::Backup));
    j.operation(&step(3, "Insert b 2"), &unavailable());
    j.operation(&step(4, "Update a 5"), &Answer::Ok);
    j.operation(
        &step(5, "Remove a"),
        &Answer::Indeterminate("no ack".into()),
    );
    j.operation(&step(6, "Get b"), &unavailable());
    j.operation(&step(7, "Get b"), &Answer::NotFound);
    assert_eq!(lines(&j), vec![At::Line(4)]);
    let v = &j.violations()[0];
    assert_eq!(v.answer, "ok");
    assert_eq!(v.expected, "unavailable or indeterminate (the backup down)");
}

#[test]
fn a_read_with_the_backup_down_must_match() {
    let mut j = pair();
    j.operation(&step(1, "Insert a 1"), &Answer::Ok);
    j.action(&Action::Stop(PairMember::Backup));
    j.operation(&step(3, "Get a"), &value("1"));
    j.operation(&step(4, "Get a"), &Answer::NotFound);
    assert_eq!(lines(&j), vec![At::Line(4)]);
    assert_eq!(
        j.violations()[0].expected,
        "value \"1\" or unavailable (the backup down)"
    );
}

#[test]
fn a_read_succeeding_while_the_primary_is_down_is_reported() {
    let mut j = pair();
    j.operation(&step(1, "Insert a 1"), &Answer::Ok);
    j.action(&Action::Kill(PairMember::Primary));
    j.operation(&step(3, "Get a"), &Answer::Unreachable("gone".into()));
    j.operation(
        &step(4, "Insert b 1"),
        &Answer::no_answer_within(Duration::from_secs(5)),
    );
    j.operation(&step(5, "Get a"), &value("1"));
    assert_eq!(lines(&j), vec![At::Line(5)]);
    assert_eq!(j.violations()[0].expected, "a failure (the primary down)");
}

#[test]
fn both_down_empties_the_model() {
    let mut j = pair();
    j.operation(&step(1, "Insert a 1"), &Answer::Ok);
    j.action(&Action::Kill(PairMember::Backup));
    j.action(&Action::Kill(PairMember::Primary));
    j.action(&Action::Start(PairMember::Primary));
    j.action(&Action::Start(PairMember::Backup));
    j.operation(&step(6, "Get a"), &value("1"));
    j.operation(&step(7, "Get a"), &Answer::NotFound);
    assert_eq!(lines(&j), vec![At::Line(6)]);
    assert_eq!(j.violations()[0].expected, "not found");
}

#[test]
fn one_server_down_keeps_the_model() {
    let mut j = pair();
    j.operation(&step(1, "Insert a 1"), &Answer::Ok);
    j.action(&Action::Kill(PairMember::Primary));
    j.action(&Action::Start(PairMember::Primary));
    j.operation(&step(4, "Get a"), &Answer::NotFound);
    assert_eq!(lines(&j), vec![At::Line(4)]);
}

#[test]
fn an_indeterminate_write_may_have_happened_until_a_read_settles_it() {
    let mut j = pair();
    j.operation(&step(1, "Insert a 1"), &Answer::Ok);
    j.action(&Action::Kill(PairMember::Backup));
    j.operation(
        &step(3, "Update a 2"),
        &Answer::Indeterminate("no ack".into()),
    );
    j.action(&Action::Start(PairMember::Backup));
    assert_eq!(j.model().possible("a").to_string(), "\"1\" or \"2\"");
    j.operation(&step(5, "Get a"), &value("2"));
    assert_eq!(j.model().possible("a"), Possible::value("2"));
    // Settled: the old value is no longer acceptable.
    j.operation(&step(6, "Get a"), &value("1"));
    assert_eq!(lines(&j), vec![At::Line(6)]);
    assert_eq!(j.violations()[0].expected, "value \"2\"");
}

#[test]
fn an_insert_after_an_indeterminate_insert_may_succeed_or_exist() {
    let mut j = pair();
    j.action(&Action::Stop(PairMember::Backup));
    j.operation(
        &step(2, "Insert a 1"),
        &Answer::Indeterminate("no ack".into()),
    );
    j.action(&Action::Start(PairMember::Backup));
    j.operation(&step(4, "Insert a 7"), &Answer::Exists);
    assert_eq!(j.model().possible("a"), Possible::value("1"));
    j.operation(&step(5, "Get a"), &Answer::NotFound);
    assert_eq!(lines(&j), vec![At::Line(5)]);
    assert_eq!(j.violations()[0].expected, "value \"1\"");
}

#[test]
fn a_wrong_write_leaves_the_key_uncertain_instead_of_cascading() {
    let mut j = pair();
    j.operation(&step(1, "Insert a 1"), &Answer::Ok);
    j.operation(&step(2, "Remove a"), &value("9"));
    j.operation(&step(3, "Get a"), &Answer::NotFound);
    assert_eq!(lines(&j), vec![At::Line(2)]);
}

#[test]
fn block_answers_may_come_from_any_state_the_block_passed_through() {
    let mut j = pair();
    j.operation(&step(1, "Insert a 1"), &Answer::Ok);
    let ops = [
        step(3, "Insert b 1"),
        step(4, "Insert c 1"),
        step(5, "Update a 2"),
        step(6, "Get a"),
    ];
    let kill = Action::Kill(PairMember::Backup);
    j.block(
        &[
            (&ops[0], Answer::Ok),
            (&ops[1], Answer::Indeterminate("no ack".into())),
            (&ops[2], unavailable()),
            (&ops[3], value("1")),
        ],
        &[&kill],
    );
    assert_eq!(j.violations(), &[]);
    assert_eq!(j.up(), Up::PrimaryOnly);
    assert_eq!(j.model().possible("b"), Possible::value("1"));
    assert_eq!(j.model().possible("c").to_string(), "absent or \"1\"");
    assert_eq!(j.model().possible("a"), Possible::value("1"));

    // Without a server change in the block, only the pair's exact answers will do.
    let mut j = pair();
    let ops = [step(2, "Insert b 1"), step(3, "Insert c 1")];
    j.block(&[(&ops[0], Answer::Ok), (&ops[1], unavailable())], &[]);
    assert_eq!(lines(&j), vec![At::Line(3)]);
}

#[test]
fn block_operations_are_judged_against_the_model_before_the_block() {
    let mut j = pair();
    let ops = [step(2, "Insert a 1"), step(3, "Get b")];
    j.block(&[(&ops[0], Answer::Ok), (&ops[1], value("1"))], &[]);
    assert_eq!(lines(&j), vec![At::Line(3)]);
    assert_eq!(j.model().possible("a"), Possible::value("1"));
}

#[test]
fn a_missing_key_in_the_final_dump_is_reported() {
    let mut j = pair();
    j.operation(&step(1, "Insert a 1"), &Answer::Ok);
    j.operation(&step(2, "Insert b 2"), &Answer::Ok);
    j.dump(PairMember::Primary, Ok(&pairs(&[("a", "1")])));
    assert_eq!(lines(&j), vec![At::End]);
    let v = &j.violations()[0];
    assert_eq!(v.instruction, "dump of the primary, key \"b\"");
    assert_eq!(v.answer, "absent");
    assert_eq!(v.expected, "\"2\"");
}

#[test]
fn an_extra_key_in_the_final_dump_is_reported() {
    let mut j = pair();
    j.dump(PairMember::Backup, Ok(&pairs(&[("ghost", "1")])));
    assert_eq!(lines(&j), vec![At::End]);
    assert_eq!(j.violations()[0].expected, "absent");
}

#[test]
fn a_stale_backup_dump_is_reported() {
    let mut j = pair();
    j.operation(&step(1, "Insert a 1"), &Answer::Ok);
    j.operation(&step(2, "Update a 2"), &Answer::Ok);
    j.dump(PairMember::Primary, Ok(&pairs(&[("a", "2")])));
    j.dump(PairMember::Backup, Ok(&pairs(&[("a", "1")])));
    assert_eq!(j.violations().len(), 1);
    let v = &j.violations()[0];
    assert_eq!(v.instruction, "dump of the backup, key \"a\"");
    assert_eq!(v.answer, "value \"1\"");
    assert_eq!(v.expected, "\"2\"");
}

#[test]
fn the_primary_dump_settles_uncertain_keys_for_the_backup() {
    let mut j = pair();
    j.action(&Action::Kill(PairMember::Backup));
    j.operation(
        &step(2, "Insert a 1"),
        &Answer::Indeterminate("no ack".into()),
    );
    j.action(&Action::Start(PairMember::Backup));
    j.dump(PairMember::Primary, Ok(&[]));
    assert_eq!(j.violations(), &[]);
    j.dump(PairMember::Backup, Ok(&pairs(&[("a", "1")])));
    assert_eq!(lines(&j), vec![At::End]);
}

#[test]
fn a_refused_dump_is_excused_only_for_a_lone_server() {
    let mut j = pair();
    j.dump(PairMember::Primary, Err(&unavailable()));
    assert_eq!(lines(&j), vec![At::End]);
    let mut j = pair();
    j.action(&Action::Kill(PairMember::Backup));
    j.dump(PairMember::Primary, Err(&unavailable()));
    j.dump(
        PairMember::Primary,
        Err(&Answer::Unreachable("connection refused".into())),
    );
    assert_eq!(lines(&j), vec![At::End]);
}

#[test]
fn answers_from_the_client_library_map_to_answers() {
    assert_eq!(
        Answer::from(ClientError::Connection("x".into())),
        Answer::Unreachable("x".into())
    );
    assert_eq!(
        Answer::from(ClientError::Indeterminate("y".into())),
        Answer::Indeterminate("y".into())
    );
    assert_eq!(Answer::from_reply(Reply::Exists), Answer::Exists);
    assert!(matches!(
        Answer::from_reply(Reply::Count(3)),
        Answer::Error(_)
    ));
}

#[test]
fn client_errors_take_the_one_outcome_mapping() {
    let errors = [
        ClientError::Exists,
        ClientError::NotFound,
        ClientError::Unavailable("x".into()),
        ClientError::Indeterminate("x".into()),
        ClientError::Forbidden("x".into()),
        ClientError::Server {
            code: quickv_proto::ErrorCode::KeyTooLarge,
            message: "x".into(),
        },
        ClientError::Connection("x".into()),
        ClientError::Protocol("x".into()),
        ClientError::Timeout("x".into()),
    ];
    for e in errors {
        let want = quickv_proto::Outcome::from(&e);
        assert_eq!(Answer::from(e.clone()).outcome(), want, "{e:?}");
    }
    let forbidden = Reply::Error {
        code: quickv_proto::ErrorCode::Forbidden,
        message: "role read".into(),
    };
    assert_eq!(
        Answer::from_reply(forbidden.clone()).outcome(),
        quickv_proto::Outcome::of(&forbidden)
    );
}

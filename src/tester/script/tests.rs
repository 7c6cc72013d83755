//! Unit tests of the script.

use super::*;

fn parse(text: &str) -> Script {
    Script::parse("t", text).expect("script parses")
}

fn errors(text: &str) -> Vec<ParseError> {
    match Script::parse_with("t", text, ParseMode::Strict) {
        Err(ScriptError::Parse(errors)) => errors,
        other => panic!("expected parse errors, got {other:?}"),
    }
}

#[test]
fn every_instruction_with_its_line() {
    let script = parse(
        "-- a comment\n\
         # another\n\
         \n\
         Start primary\n\
         start BACKUP\n\
         Insert k v\n\
         Update k w\n\
         Get k\n\
         Remove k\n\
         Sleep 5\n\
         Exec touch   some-file\n\
         Stop backup\n\
         Kill primary\n",
    );
    let lines: Vec<(usize, &str)> = script
        .steps
        .iter()
        .map(|s| (s.line, s.text.as_str()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (4, "Start primary"),
            (5, "start BACKUP"),
            (6, "Insert k v"),
            (7, "Update k w"),
            (8, "Get k"),
            (9, "Remove k"),
            (10, "Sleep 5"),
            (11, "Exec touch some-file"),
            (12, "Stop backup"),
            (13, "Kill primary"),
        ]
    );
    assert_eq!(
        script.steps[1].item,
        Instruction::Action(Action::Start(PairMember::Backup))
    );
    assert_eq!(
        script.steps[2].item,
        Instruction::Op(KvOp::Insert {
            key: "k".into(),
            value: "v".into()
        })
    );
    assert_eq!(
        script.steps[6].item,
        Instruction::Action(Action::Sleep(Duration::from_millis(5)))
    );
    assert_eq!(
        script.steps[7].item,
        Instruction::Action(Action::Exec(vec!["touch".into(), "some-file".into()]))
    );
    assert!(!script.uses_switch);
    assert_eq!(script.op_count(), 4);
}

#[test]
fn classic_exec_lines_mean_start_and_stop() {
    let script = parse(
        "Exec bin/start_server -p\n\
         Exec ./bin/start_server -b\n\
         Exec bin/stop_server -p\n\
         Exec stop_server -b\n\
         Exec bin/start_server -x\n\
         Exec bin/start_server -p extra\n\
         Switch primary\n",
    );
    let items: Vec<&Instruction> = script.steps.iter().map(|s| &s.item).collect();
    assert_eq!(
        items,
        vec![
            &Instruction::Action(Action::Start(PairMember::Primary)),
            &Instruction::Action(Action::Start(PairMember::Backup)),
            &Instruction::Action(Action::Stop(PairMember::Primary)),
            &Instruction::Action(Action::Stop(PairMember::Backup)),
            &Instruction::Action(Action::Exec(vec!["bin/start_server".into(), "-x".into()])),
            &Instruction::Action(Action::Exec(vec![
                "bin/start_server".into(),
                "-p".into(),
                "extra".into()
            ])),
            &Instruction::Action(Action::Switch(PairMember::Primary)),
        ]
    );
    assert_eq!(script.steps[0].text, "Exec bin/start_server -p");
    assert!(script.uses_switch);
}

#[test]
fn blocks_split_operations_from_actions() {
    let script = parse(
        "Block\n\
         Insert a 1\n\
         Kill backup\n\
         Get b\n\
         Start backup\n\
         Endblock\n\
         Get a\n",
    );
    assert_eq!(script.steps.len(), 2);
    assert_eq!(script.steps[0].line, 1);
    let Instruction::Block(block) = &script.steps[0].item else {
        panic!("expected a block, got {:?}", script.steps[0].item);
    };
    let op_lines: Vec<usize> = block.ops.iter().map(|s| s.line).collect();
    let action_lines: Vec<usize> = block.actions.iter().map(|s| s.line).collect();
    assert_eq!(op_lines, vec![2, 4]);
    assert_eq!(action_lines, vec![3, 5]);
    assert_eq!(script.steps[1].line, 7);
    assert_eq!(script.op_count(), 3);
    assert!(script.illegal.is_empty());
}

#[test]
fn a_key_twice_in_a_block_is_an_error_on_the_second_line() {
    let errs = errors(
        "Block\n\
         Insert a 1\n\
         Get b\n\
         Update a 2\n\
         Endblock\n\
         Block\n\
         Get a\n\
         Endblock\n",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].line, 4);
    assert!(errs[0].message.contains("\"a\""), "{}", errs[0].message);
    assert!(errs[0].message.contains("line 2"), "{}", errs[0].message);
}

#[test]
fn every_malformed_line_is_reported_with_its_line() {
    let errs = errors(
        "Start primary\n\
         Frobnicate x\n\
         Insert only-key\n\
         Get a b\n\
         Start middle\n\
         Sleep soon\n\
         Exec\n\
         Endblock\n\
         Block now\n\
         Insert fine value\n",
    );
    let got: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(got, vec![2, 3, 4, 5, 6, 7, 8, 9]);
    assert!(errs[0]
        .message
        .contains("unknown instruction \"Frobnicate\""));
    assert!(
        errs[1].message.contains("Insert KEY VALUE"),
        "{}",
        errs[1].message
    );
    assert!(
        errs[1].message.contains("1 argument"),
        "{}",
        errs[1].message
    );
    assert!(errs[4].message.contains("\"soon\""));
    let shown = ScriptError::Parse(errs).to_string();
    assert!(shown.starts_with("line 2: unknown instruction"), "{shown}");
    assert_eq!(shown.lines().count(), 8);
}

#[test]
fn block_structure_errors() {
    let errs = errors("Block\nBlock\nGet a\nEndblock\nBlock\nGet b\n");
    let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.message.as_str())).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, 2);
    assert!(got[0].1.contains("opened on line 1"));
    assert_eq!(got[1], (5, "Block is never closed by Endblock"));

    let errs = errors("Block\nSwitch backup\nEndblock\n");
    assert_eq!(errs[0].line, 2);
    assert!(errs[0].message.contains("Switch"));
}

/// The classic rule: each illegal line is reported with its number and skipped; the rest of
/// the script, the block included, is kept.
#[test]
fn classic_rule_skips_a_repeated_key_in_a_block_and_goes_on() {
    let script = parse(
        "Block\n\
         Insert a 1\n\
         Get b\n\
         Update a 2\n\
         Insert c 3\n\
         Endblock\n\
         Get a\n",
    );
    assert_eq!(script.illegal.len(), 1, "{:?}", script.illegal);
    assert_eq!(script.illegal[0].line, 4);
    assert!(script.illegal[0].message.contains("\"a\""));
    let Instruction::Block(block) = &script.steps[0].item else {
        panic!("expected a block, got {:?}", script.steps[0].item);
    };
    let op_lines: Vec<usize> = block.ops.iter().map(|s| s.line).collect();
    assert_eq!(op_lines, vec![2, 3, 5], "the repeated key is not sent");
    assert_eq!(script.steps[1].line, 7);
    assert_eq!(script.op_count(), 4, "the skipped line is not counted");
}

#[test]
fn classic_rule_skips_exec_sleep_and_switch_inside_a_block() {
    let script = parse(
        "Block\n\
         Insert a 1\n\
         Exec bin/start_server -b\n\
         Sleep 100\n\
         Switch backup\n\
         Exec touch x\n\
         Kill backup\n\
         Endblock\n\
         Sleep 5\n\
         Exec bin/start_server -b\n",
    );
    let lines: Vec<usize> = script.illegal.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![3, 4, 5, 6], "{:?}", script.illegal);
    assert!(script.illegal[0]
        .message
        .starts_with("Exec is not allowed inside the Block opened on line 1"));
    assert!(script.illegal[1]
        .message
        .starts_with("Sleep is not allowed"));
    let Instruction::Block(block) = &script.steps[0].item else {
        panic!("expected a block");
    };
    assert_eq!(block.ops.len(), 1);
    let actions: Vec<&Action> = block.actions.iter().map(|s| &s.item).collect();
    assert_eq!(actions, vec![&Action::Kill(PairMember::Backup)]);
    // Outside a block the same instructions are fine.
    assert_eq!(script.steps.len(), 3);
    assert_eq!(
        script.steps[2].item,
        Instruction::Action(Action::Start(PairMember::Backup))
    );
    assert!(!script.uses_switch, "a skipped Switch does not count");
}

#[test]
fn classic_rule_skips_unknown_and_malformed_lines() {
    let script = parse(
        "Start primary\n\
         Frobnicate x\n\
         Insert only-key\n\
         Endblock\n\
         Block\n\
         Block\n\
         Get a\n",
    );
    let lines: Vec<usize> = script.illegal.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 6, 5], "{:?}", script.illegal);
    assert!(script.illegal[0]
        .message
        .contains("unknown instruction \"Frobnicate\""));
    assert!(script.illegal[4]
        .message
        .contains("closed at the end of the file"));
    assert_eq!(script.steps.len(), 2, "{:?}", script.steps);
    assert_eq!(script.op_count(), 1, "the unclosed block still runs");
}

#[test]
fn strict_mode_makes_every_illegal_line_an_error() {
    let text = "Block\nInsert a 1\nGet a\nSleep 1\nExec true\nEndblock\nFoo\n";
    let errs = errors(text);
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![3, 4, 5, 7]);
    let classic = parse(text);
    assert_eq!(
        classic.illegal, errs,
        "the classic rule reports exactly what strict refuses"
    );
}

#[test]
fn load_names_the_script_and_its_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.test");
    std::fs::write(&path, "Get a\n").expect("write");
    let script = Script::load(&path).expect("load");
    assert_eq!(script.name, "x.test");
    assert_eq!(script.dir, dir.path());
    match Script::load(&dir.path().join("missing.test")) {
        Err(ScriptError::Read { path, .. }) => assert!(path.ends_with("missing.test")),
        other => panic!("expected a read error, got {other:?}"),
    }
}

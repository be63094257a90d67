//! Tests of world loading, validation and every action, on the shipped Quiet Harbour world.

use prost_types::value::Kind;
use tta_proto::v1::{IpaOutput, WbaOutput, WorldChange, WorldChangeOp};

use super::*;
use crate::engines::InputProcessor;

const QUIET_HARBOR: &str = include_str!("../../../../../deploy/worlds/quiet-harbor.yaml");

/// The world shipped in `deploy/worlds`, for tests across the engines.
pub(crate) fn quiet_harbor() -> World {
    World::from_yaml("quiet-harbor.yaml", QUIET_HARBOR).unwrap()
}

fn ipa(world: &World, text: &str) -> IpaOutput {
    InputProcessor::new().with_world(world).parse(text)
}

/// Plays `texts` from a new session and returns the last output and state.
fn play(texts: &[&str]) -> (WbaOutput, WorldState) {
    let world = quiet_harbor();
    let mut state = WorldState::new(&world);
    let mut last = None;
    for text in texts {
        let (output, next) = state.apply(&world, &ipa(&world, text));
        state = next;
        last = Some(output);
    }
    (last.unwrap(), state)
}

fn text_of(value: &Option<prost_types::Value>) -> String {
    match value.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        Some(Kind::NumberValue(n)) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// A change as "path op old -> new", easy to compare.
fn describe(change: &WorldChange) -> String {
    let op = match change.op() {
        WorldChangeOp::Set => "set",
        WorldChangeOp::Add => "add",
        WorldChangeOp::Remove => "remove",
        WorldChangeOp::Unspecified => "?",
    };
    match change.op() {
        WorldChangeOp::Set => format!(
            "{} {op} {} -> {}",
            change.path,
            text_of(&change.old_value),
            text_of(&change.new_value)
        ),
        _ => format!("{} {op} {}", change.path, text_of(&change.new_value)),
    }
}

fn changes(output: &WbaOutput) -> Vec<String> {
    output.changes.iter().map(describe).collect()
}

fn invalid(yaml: &str) -> String {
    World::from_yaml("test.yaml", yaml).unwrap_err().to_string()
}

const MINIMAL: &str = r#"
id: tiny
title: Tiny
start: a
flags: { open: false }
places:
  - { id: a, name: the first room, description: A room., exits: { north: b } }
  - { id: b, name: the second room, description: Another room., exits: { south: a } }
"#;

// --- loading -------------------------------------------------------------------------------

#[test]
fn the_quiet_harbor_world_is_small_and_complete() {
    let world = quiet_harbor();
    assert_eq!(world.id(), "quiet-harbor");
    assert!(
        (6..=9).contains(&world.places().len()),
        "{} places",
        world.places().len()
    );
    assert!(
        (5..=8).contains(&world.items().len()),
        "{} items",
        world.items().len()
    );
    assert!((2..=3).contains(&world.characters().len()));
    assert_eq!(world.start(), "harbour");
    assert!(!world.intro().is_empty());
}

#[test]
fn a_minimal_world_loads() {
    let world = World::from_yaml("tiny.yaml", MINIMAL).unwrap();
    assert_eq!(world.place("a").unwrap().exits[&Direction::North].to, "b");
    assert_eq!(
        world.resolve("the second room"),
        Some((ThingKind::Place, "b"))
    );
}

#[test]
fn load_dir_reads_every_world_named_by_its_id() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.yaml"), MINIMAL).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a world").unwrap();
    let worlds = World::load_dir(dir.path()).unwrap();
    assert_eq!(worlds.len(), 1);
    assert_eq!(worlds[0].id(), "tiny");
}

#[test]
fn load_dir_refuses_a_world_whose_id_is_not_its_file_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("other.yaml"), MINIMAL).unwrap();
    let error = World::load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        error.ends_with("other.yaml: world id \"tiny\" must match the file name \"other\""),
        "{error}"
    );
}

#[test]
fn the_shipped_worlds_directory_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/worlds");
    let worlds = World::load_dir(&dir).unwrap();
    assert!(worlds.iter().any(|world| world.id() == "quiet-harbor"));
}

#[test]
fn a_missing_file_is_an_error_naming_its_path() {
    let error = World::load(std::path::Path::new("/nonexistent/world.yaml")).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/world.yaml: cannot read the world file")
    );
}

// --- validation ----------------------------------------------------------------------------

#[test]
fn an_exit_to_an_unknown_place_is_named_by_its_path() {
    let error = invalid(&MINIMAL.replace("exits: { north: b }", "exits: { north: lighthuose }"));
    assert!(
        error.contains("places[0].exits.north.to: unknown place \"lighthuose\""),
        "{error}"
    );
}

#[test]
fn duplicate_ids_are_refused_with_the_first_use() {
    let yaml = format!(
        "{MINIMAL}items:\n  - {{ id: a, name: a thing, description: A thing., location: a }}\n"
    );
    let error = invalid(&yaml);
    assert!(
        error.contains("items[0].id: duplicate id \"a\" (first used at places[0])"),
        "{error}"
    );
}

#[test]
fn an_item_in_an_unknown_place_is_refused() {
    let yaml = format!(
        "{MINIMAL}items:\n  - {{ id: cup, name: a cup, description: A cup., location: attic }}\n"
    );
    let error = invalid(&yaml);
    assert!(
        error.contains("items[0].location: unknown place \"attic\""),
        "{error}"
    );
}

#[test]
fn a_lock_on_an_undeclared_flag_is_refused() {
    let yaml = MINIMAL.replace(
        "exits: { north: b }",
        "exits: { north: { to: b, locked_by: lit } }",
    );
    let error = invalid(&yaml);
    assert!(
        error.contains("places[0].exits.north.locked_by: unknown flag \"lit\""),
        "{error}"
    );
}

#[test]
fn one_phrase_naming_two_things_is_refused() {
    let yaml = format!(
        "{MINIMAL}items:\n  - {{ id: cup, name: a cup, aliases: [mug], description: A cup., location: a }}\n  - {{ id: jar, name: a jar, aliases: [mug], description: A jar., location: a }}\n"
    );
    let error = invalid(&yaml);
    assert!(
        error.contains(
            "items[1].aliases[0]: \"mug\" already names item \"cup\" (items[0].aliases[0])"
        ),
        "{error}"
    );
}

#[test]
fn a_place_no_exit_leads_to_is_refused() {
    let room_b =
        "  - { id: b, name: the second room, description: Another room., exits: { south: a } }\n";
    let island = "  - { id: c, name: an island, description: Alone. }\n";
    let error = invalid(&MINIMAL.replace(room_b, &format!("{room_b}{island}")));
    assert!(
        error.contains("places[2]: \"c\" cannot be reached from the start place"),
        "{error}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = MINIMAL
        .replace("start: a", "start: nowhere")
        .replace("description: Another room.", "description: \"\"");
    let error = invalid(&yaml);
    assert!(
        error.contains("start: unknown place \"nowhere\""),
        "{error}"
    );
    assert!(
        error.contains("places[1].description: must not be empty"),
        "{error}"
    );
}

#[test]
fn unknown_keys_and_directions_are_parse_errors() {
    let error = invalid(&MINIMAL.replace("title: Tiny", "title: Tiny\ncolour: blue"));
    assert!(
        error.starts_with("test.yaml: not a valid world file") && error.contains("colour"),
        "{error}"
    );
    let error = invalid(&MINIMAL.replace("exits: { north: b }", "exits: { northwest: b }"));
    assert!(error.contains("northwest"), "{error}");
}

#[test]
fn a_use_effect_naming_unknown_things_is_refused() {
    let yaml = format!(
        "{MINIMAL}uses:\n  - {{ item: key, place: attic, sets: {{ lit: true }}, text: Click. }}\n"
    );
    let error = invalid(&yaml);
    assert!(
        error.contains("uses[0].item: unknown item \"key\""),
        "{error}"
    );
    assert!(
        error.contains("uses[0].place: unknown place \"attic\""),
        "{error}"
    );
    assert!(
        error.contains("uses[0].sets.lit: unknown flag \"lit\""),
        "{error}"
    );
}

// --- state ---------------------------------------------------------------------------------

#[test]
fn a_new_session_starts_at_the_start_with_default_flags() {
    let world = quiet_harbor();
    let state = WorldState::new(&world);
    assert_eq!(state.location, "harbour");
    assert_eq!(state.version, 0);
    assert!(state.inventory.is_empty());
    assert_eq!(state.item_locations["lantern"], "boathouse");
    assert!(!state.flags["cave_lit"]);
    assert!(state.visited.contains("harbour"));
}

#[test]
fn the_state_round_trips_through_json() {
    let (_, state) = play(&["s", "take lantern"]);
    let json = serde_json::to_string(&state).unwrap();
    let back: WorldState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
}

#[test]
fn a_state_stored_before_a_field_existed_still_loads() {
    let json = r#"{"world_id":"quiet-harbor","version":3,"location":"shore"}"#;
    let state: WorldState = serde_json::from_str(json).unwrap();
    assert_eq!(state.location, "shore");
    assert!(state.conversations.is_empty());
}

#[test]
fn the_summary_describes_the_current_place() {
    let world = quiet_harbor();
    let summary = WorldState::new(&world).summary(&world);
    assert_eq!(summary.location_name, "the quiet harbour");
    assert!(summary.location_description.starts_with("Fishing boats"));
    assert_eq!(summary.characters_here[0].name, "Pip, the harbour cat");
    let exits: Vec<&str> = summary.exits.iter().map(|e| e.direction.as_str()).collect();
    assert_eq!(exits, ["north", "south", "east", "west"]);
    assert!(summary.flags.is_empty(), "only set flags are listed");
}

// --- actions -------------------------------------------------------------------------------

#[test]
fn moving_through_an_open_exit_changes_the_location_and_bumps_the_version() {
    let (output, state) = play(&["go north"]);
    assert!(output.applied);
    assert_eq!(state.location, "lighthouse");
    assert_eq!((state.version, output.version), (1, 1));
    assert_eq!(
        changes(&output),
        [
            "player.location set harbour -> lighthouse",
            "player.visited add lighthouse"
        ]
    );
    assert_eq!(
        output.events,
        ["moved:lighthouse:north", "discovered:lighthouse"]
    );
    assert_eq!(output.world.unwrap().location_id, "lighthouse");
}

#[test]
fn returning_to_a_visited_place_is_not_a_discovery() {
    let (output, state) = play(&["n", "s"]);
    assert_eq!(
        changes(&output),
        ["player.location set lighthouse -> harbour"]
    );
    assert_eq!(output.events, ["moved:harbour:south"]);
    assert_eq!(state.version, 2);
}

#[test]
fn moving_by_place_name_finds_the_exit_that_leads_there() {
    let (output, state) = play(&["walk to the tea house"]);
    assert!(output.applied, "{}", output.rejection_reason);
    assert_eq!(state.location, "tea_house");
    assert_eq!(output.events[0], "moved:tea_house:east");
}

#[test]
fn a_place_named_with_a_direction_word_wins_when_an_exit_leads_there() {
    let (output, state) = play(&["w", "go in the cave"]);
    assert!(output.applied, "{}", output.rejection_reason);
    assert_eq!(state.location, "cave");
    assert_eq!(output.events[0], "moved:cave:north");
}

#[test]
fn a_locked_exit_refuses_kindly_and_changes_nothing() {
    let (output, state) = play(&["w", "n", "go in"]);
    assert!(!output.applied);
    assert!(
        output
            .rejection_reason
            .starts_with("The passage ahead is very dark.")
    );
    assert!(output.changes.is_empty());
    assert_eq!(output.events, ["refused:locked"]);
    assert_eq!(state.location, "cave");
    assert_eq!((state.version, output.version), (2, 2));
    let summary = output.world.unwrap();
    assert!(summary.exits.iter().any(|e| e.direction == "in" && !e.open));
}

#[test]
fn a_direction_without_an_exit_says_where_one_can_go() {
    let (output, _) = play(&["go up"]);
    assert!(!output.applied);
    assert_eq!(
        output.rejection_reason,
        "There's no way up from here. From here you can go north to the lighthouse, south to \
         the old boathouse, east to the tea house or west to the pebble shore."
    );
}

#[test]
fn a_place_that_is_not_next_door_is_refused_with_the_ways_on() {
    let (output, _) = play(&["go to the grotto"]);
    assert!(!output.applied);
    assert!(
        output
            .rejection_reason
            .starts_with("The glowing grotto isn't a single step from here")
    );
}

#[test]
fn taking_a_portable_item_moves_it_into_the_inventory() {
    let (output, state) = play(&["s", "take the lantern"]);
    assert!(output.applied);
    assert_eq!(state.inventory, ["lantern"]);
    assert!(!state.item_locations.contains_key("lantern"));
    assert_eq!(
        changes(&output),
        [
            "locations.boathouse.items remove lantern",
            "player.inventory add lantern"
        ]
    );
    assert_eq!(output.events, ["took:lantern"]);
    let summary = output.world.unwrap();
    assert!(summary.items_here.is_empty());
    assert_eq!(summary.inventory[0].name, "an old brass lantern");
    assert_eq!(state.version, 2);
}

#[test]
fn taking_a_non_portable_item_is_refused_with_its_reason() {
    let (output, state) = play(&["e", "take the teapot"]);
    assert!(!output.applied);
    assert_eq!(
        output.rejection_reason,
        "The teapot belongs to the tea house, but you're welcome to pour yourself a cup."
    );
    assert_eq!(output.events, ["refused:not_portable"]);
    assert!(state.inventory.is_empty());
}

#[test]
fn taking_something_not_here_never_repeats_the_players_words() {
    let (output, _) = play(&["take the dagger"]);
    assert!(!output.applied);
    assert_eq!(output.rejection_reason, "You don't see that here.");
    let (output, _) = play(&["take the lantern"]);
    assert_eq!(output.rejection_reason, "You don't see that here.");
}

#[test]
fn taking_an_item_already_carried_is_refused() {
    let (output, _) = play(&["s", "take lantern", "get lamp"]);
    assert_eq!(
        output.rejection_reason,
        "You're already carrying the old brass lantern."
    );
}

#[test]
fn dropping_an_item_leaves_it_in_the_current_place() {
    let (output, state) = play(&["s", "take lantern", "n", "drop the lantern"]);
    assert!(output.applied);
    assert!(state.inventory.is_empty());
    assert_eq!(state.item_locations["lantern"], "harbour");
    assert_eq!(
        changes(&output),
        [
            "player.inventory remove lantern",
            "locations.harbour.items add lantern"
        ]
    );
    let (output, _) = play(&["drop the lantern"]);
    assert_eq!(output.rejection_reason, "You aren't carrying that.");
}

#[test]
fn using_the_lantern_in_the_cave_unlocks_the_way_in() {
    let (output, state) = play(&["s", "take lantern", "n", "w", "n", "use the lantern"]);
    assert!(output.applied, "{}", output.rejection_reason);
    assert_eq!(changes(&output), ["flags.cave_lit set false -> true"]);
    assert_eq!(output.events[0], "used:lantern");
    assert!(output.events[1].starts_with("effect:lantern:You turn the little key"));
    assert_eq!(output.events[2], "opened:in:grotto");
    assert!(state.flags["cave_lit"]);
    let summary = output.world.unwrap();
    assert!(
        summary
            .location_description
            .contains("lit by the warm glow")
    );
    assert_eq!(
        summary.flags.get("cave_lit").map(String::as_str),
        Some("true")
    );

    let (output, state) = play(&[
        "s",
        "take lantern",
        "n",
        "w",
        "n",
        "use the lantern",
        "go in",
    ]);
    assert!(output.applied);
    assert_eq!(state.location, "grotto");
}

#[test]
fn using_it_again_changes_nothing_and_says_so_kindly() {
    let (output, state) = play(&[
        "s",
        "take lantern",
        "n",
        "w",
        "n",
        "light lantern",
        "use lamp",
    ]);
    assert!(!output.applied);
    assert_eq!(
        output.rejection_reason,
        "The lantern is already glowing here, steady and warm."
    );
    assert_eq!(state.version, 6);
}

#[test]
fn using_an_item_with_only_a_use_text_is_applied_without_changes() {
    let (output, state) = play(&["w", "take the stone", "use stone"]);
    assert!(output.applied);
    assert!(output.changes.is_empty());
    assert_eq!(output.events[0], "used:stone");
    assert!(output.events[1].contains("It is cool and smooth"));
    assert_eq!(state.version, 2);
}

#[test]
fn using_an_item_that_is_not_here_is_refused() {
    let (output, _) = play(&["use the lantern"]);
    assert!(!output.applied);
    assert_eq!(output.rejection_reason, "You don't have that with you.");
}

#[test]
fn using_a_fixed_item_in_its_place_works() {
    let (output, state) = play(&["e", "pour some tea"]);
    assert!(output.applied, "{}", output.rejection_reason);
    assert!(state.flags["tea_poured"]);
}

#[test]
fn inventory_lists_without_changing_anything() {
    let (output, state) = play(&["s", "take lantern", "inventory"]);
    assert!(output.applied);
    assert_eq!(output.events, ["inventory"]);
    assert!(output.changes.is_empty());
    assert_eq!(state.version, 2);
    assert_eq!(output.world.unwrap().inventory[0].id, "lantern");
}

#[test]
fn talking_gives_the_next_line_each_time() {
    let (first, _) = play(&["e", "talk to mara"]);
    assert_eq!(first.events[0], "talked:mara");
    assert!(first.events[1].starts_with("said:mara:Mara looks up from the counter"));
    assert_eq!(
        changes(&first),
        ["characters.mara.conversations set 0 -> 1"]
    );
    let (second, state) = play(&["e", "talk to mara", "talk to the tea keeper"]);
    assert!(second.events[1].starts_with("said:mara:Mara wipes a cup"));
    assert_eq!(state.conversations["mara"], 2);
}

#[test]
fn dialogue_follows_the_flags() {
    let (output, _) = play(&["e", "pour tea", "talk to mara"]);
    assert!(
        output.events[1].contains("Hold it with both hands"),
        "{:?}",
        output.events
    );
}

#[test]
fn talking_without_a_name_talks_to_whoever_is_here() {
    let (output, _) = play(&["hello"]);
    assert!(output.applied);
    assert_eq!(output.events[0], "talked:pip");
}

#[test]
fn talking_where_no_one_is_is_refused_gently() {
    let (output, _) = play(&["s", "talk"]);
    assert!(!output.applied);
    assert_eq!(
        output.rejection_reason,
        "There's no one here to talk to just now. The quiet can be company too."
    );
    let (output, _) = play(&["talk to mara"]);
    assert_eq!(output.rejection_reason, "Mara isn't here just now.");
}

#[test]
fn examining_gives_the_description_of_what_is_here() {
    let (output, _) = play(&["s", "examine the lantern"]);
    assert!(output.applied);
    assert!(output.events[0].starts_with("examined:item:lantern:A brass lantern"));
    let (output, _) = play(&["look at the cat"]);
    assert!(output.events[0].starts_with("examined:character:pip:A small ginger cat"));
    let (output, _) = play(&["look"]);
    assert_eq!(output.events, ["looked:harbour"]);
}

#[test]
fn feelings_rest_help_and_quit_change_nothing_in_the_world() {
    for (text, event) in [
        ("i feel anxious", "reflected"),
        ("this reminds me of my dad", "reflected"),
        ("rest", "rested:harbour"),
        ("help", "help"),
        ("quit", "quit"),
    ] {
        let (output, state) = play(&[text]);
        assert!(output.applied, "{text}");
        assert_eq!(output.events, [event], "{text}");
        assert_eq!(state.version, 0, "{text}");
    }
}

#[test]
fn an_unknown_intent_is_refused_without_blame() {
    let (output, state) = play(&["flibbertigibbet"]);
    assert!(!output.applied);
    assert!(output.rejection_reason.contains("that's all right"));
    assert_eq!(state.version, 0);
}

#[test]
fn reconcile_repairs_a_state_written_for_an_older_world_file() {
    let world = quiet_harbor();
    let mut state = WorldState::new(&world);
    state.location = "old_pier".to_owned();
    state.item_locations.remove("shell");
    state.flags.insert("retired_flag".to_owned(), true);
    assert!(state.reconcile(&world));
    assert_eq!(state.location, "harbour");
    assert_eq!(state.item_locations["shell"], "grotto");
    assert!(!state.flags.contains_key("retired_flag"));
    assert!(!state.reconcile(&world), "a sound state needs no repair");
}

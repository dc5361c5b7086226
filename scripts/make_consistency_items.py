"""Generate the story-consistency items from held-out stories (TinyStories' validation split, which no training
file contains):

    python scripts/make_consistency_items.py --stories ../shared/data/tinystories/valid.txt \
        --out src/tinygpt/evals/consistency_generated.jsonl

Each item is a story cut just before a word the story itself goes on with, that word (right) and a wrong one
that is plausible on its own because the story has used it too before the cut: a model that only copies words
from the context cannot tell them apart, one that tracks the story can. Kinds:

- name reference: a later mention of a character; wrong = another character named before the cut
- who has what: "NAME's THING" where THING was mentioned before; wrong = another character
- pronoun agreement: he/she (his/her) for the character the story is about at that point; wrong = the other
- earlier object: "the THING" after "a THING" was introduced; wrong = another thing introduced with "a"
- earlier colour: "the COLOUR THING" after "a COLOUR THING"; wrong = another colour of the story
- allowed or refused: a character answers "Yes" or "No" to a request; wrong = the other answer

One item of each kind at most per story, from a prefix of at most `--max_prefix_chars` characters (so that it
fits the models' context), chosen at random (seeded) among the story's candidates; then at most `--per_kind`
items of each kind. A kind that is one fixed pair of answers ("allowed or refused": Yes or No) keeps as many items
of each right answer: the stories say "Yes" about three times in four, so an unbalanced kind would score the
model's preference for one word (a model that always prefers "Yes" scored 0.77, one that prefers "No" 0.23),
not whether it tracks the story. The output is deterministic for the same stories and seed.
"""

import argparse
import json
import random
import re
from pathlib import Path

COLOURS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "black", "brown", "gray", "grey")
NOT_NAMES = {"The", "A", "An", "One", "Once", "He", "She", "They", "It", "I", "We", "You", "His", "Her", "Mom",
             "Dad", "Mommy", "Daddy", "Mama", "Papa", "Grandma", "Grandpa", "Then", "But", "And", "So", "When",
             "After", "Every", "Yes", "No", "Oh", "Wow", "Thank", "Sorry", "Please", "Let", "Look", "What", "Why",
             "Can", "This", "That", "There"}
THING = r"[a-z]{3,12}"
# a noun ends its phrase: punctuation or a word that cannot be a noun follows (so "the big ..." is no THING)
NOUN_END = (r"(?=[.,!?;]| (?:and|with|in|on|that|who|was|is|to|for|at|from|under|named|had|could|would|went|"
            r"said|but|so|of|too|again|back|away|very|up|down|into)\b)")


def character_names(story: str) -> list[str]:
    """Names introduced with "named NAME" or "called NAME" (TinyStories' usual way), in order of appearance."""
    names = []
    for match in re.finditer(r"\b(?:named|called) ([A-Z][a-z]{2,10})\b", story):
        if match.group(1) not in NOT_NAMES and match.group(1) not in names:
            names.append(match.group(1))
    return names


def _item(story_id: int, kind: str, story: str, cut: int, right: str, wrong: str) -> dict:
    return {"id": f"valid-{story_id}-{kind.replace(' ', '-')}", "kind": kind, "prefix": story[:cut].rstrip(),
            "right": right, "wrong": wrong}


def name_items(story_id: int, story: str, limit: int) -> dict[str, list[dict]]:
    names = character_names(story)
    found = {"name reference": [], "who has what": []}
    if len(names) < 2:
        return found
    pattern = r"(?<=[ \"“])(" + "|".join(names) + r")('s (" + THING + r"))?\b"
    for match in re.finditer(pattern, story):
        cut, name = match.start(), match.group(1)
        if cut > limit:
            break
        before = story[:cut]
        others = [n for n in names if n != name and re.search(rf"\b{n}\b", before)]
        if not re.search(rf"\b{name}\b", before) or not others:
            continue  # the right name must be a later mention; the wrong one in the story already
        thing = match.group(3)
        if thing and re.search(rf"\b{thing}\b", before):
            found["who has what"].append(_item(story_id, "who has what", story, cut, name, others[-1]))
        else:
            found["name reference"].append(_item(story_id, "name reference", story, cut, name, others[-1]))
    return found


def pronoun_items(story_id: int, story: str, limit: int) -> list[dict]:
    """He/She at a sentence start right after a sentence about one named character only."""
    names = character_names(story)
    if not names:
        return []
    items = []
    for match in re.finditer(r"(?<=[.!?] )(He|She|His|Her)\b", story):
        cut = match.start()
        if cut > limit:
            break
        previous = re.split(r"(?<=[.!?]) ", story[:cut].rstrip())[-1]
        mentioned = [n for n in names if re.search(rf"\b{n}\b", previous)]
        if len(mentioned) != 1 or re.search(r"\b(he|she|him|her|his)\b", previous, re.I) is None:
            continue  # the previous sentence names one character and refers to them with a pronoun
        other = {"He": "She", "She": "He", "His": "Her", "Her": "His"}[match.group(1)]
        items.append(_item(story_id, "pronoun agreement", story, cut, match.group(1), other))
    return items


def object_items(story_id: int, story: str, limit: int) -> dict[str, list[dict]]:
    found = {"earlier object": [], "earlier colour": []}
    introduced = {}  # thing -> where "a THING" first appears
    for match in re.finditer(rf"\ban? ({THING}){NOUN_END}", story):
        introduced.setdefault(match.group(1), match.start())
    coloured = {}  # colour -> thing, from "a COLOUR THING"
    for match in re.finditer(rf"\ban? ({'|'.join(COLOURS)}) ({THING})\b", story):
        coloured.setdefault(match.group(1), (match.group(2), match.start()))
    for match in re.finditer(rf"\bthe ({THING}){NOUN_END}|\bthe ({'|'.join(COLOURS)}) ", story):
        thing = match.group(1) or match.group(2)
        cut = match.start(1) if match.group(1) else match.start(2)
        if cut > limit:
            break
        if thing in COLOURS:  # "the COLOUR" of a thing introduced as "a COLOUR THING"; wrong: another colour
            before = story[:cut]
            others = [c for c in COLOURS if c != thing and re.search(rf"\b{c}\b", before)]
            if thing in coloured and coloured[thing][1] < cut and others:
                found["earlier colour"].append(_item(story_id, "earlier colour", story, cut, thing, others[0]))
            continue
        earlier = [t for t, at in introduced.items() if at < cut and t != thing and t not in COLOURS]
        if thing in introduced and introduced[thing] < cut and earlier:
            found["earlier object"].append(_item(story_id, "earlier object", story, cut, thing, earlier[-1]))
    return found


def permission_items(story_id: int, story: str, limit: int) -> list[dict]:
    """A request ("Can I ...?", "May I ...?") answered with "Yes" or "No" in the next quoted reply."""
    items = []
    for match in re.finditer(r"\b(?:Can|May|Could) (?:I|we)\b[^?]{3,80}\?[”\"][^“\"]{0,60}[“\"](Yes|No)\b", story):
        cut = match.start(1)
        if cut <= limit:
            right = match.group(1)
            items.append(_item(story_id, "allowed or refused", story, cut, right, "No" if right == "Yes" else "Yes"))
    return items


def story_items(story_id: int, story: str, limit: int, rng: random.Random) -> list[dict]:
    """At most one item of each kind from this story."""
    candidates = {**name_items(story_id, story, limit), **object_items(story_id, story, limit),
                  "pronoun agreement": pronoun_items(story_id, story, limit),
                  "allowed or refused": permission_items(story_id, story, limit)}
    return [rng.choice(items) for kind, items in sorted(candidates.items()) if items]


ONE_PAIR = {"allowed or refused": ("Yes", "No")}  # kinds whose right answer is always one of the same two words


def balanced(items: list[dict], answers: tuple[str, ...]) -> list[dict]:
    """As many items of each answer (the first of each, in the given order); none if an answer has none."""
    by_answer = {answer: [item for item in items if item["right"] == answer] for answer in answers}
    n = min(len(group) for group in by_answer.values())
    return [item for group in by_answer.values() for item in group[:n]]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stories", type=Path, required=True, help="TinyStories .txt (stories end with <|endoftext|>)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per_kind", type=int, default=300)
    parser.add_argument("--max_prefix_chars", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    stories = [s.strip() for s in args.stories.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
    rng = random.Random(args.seed)
    by_kind: dict[str, list[dict]] = {}
    for story_id, story in enumerate(stories):
        for item in story_items(story_id, story, args.max_prefix_chars, rng):
            by_kind.setdefault(item["kind"], []).append(item)
    items = []
    for kind in sorted(by_kind):
        rng.shuffle(by_kind[kind])
        kept = by_kind[kind][: args.per_kind]
        if kind in ONE_PAIR:
            kept = balanced(kept, ONE_PAIR[kind])
        items += sorted(kept, key=lambda item: item["id"])
        print(f"{kind}: {len(by_kind[kind]):,} candidates, {len(kept):,} kept")
    args.out.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    print(f"{len(items):,} items -> {args.out}")


if __name__ == "__main__":
    main()

"""Writes the bundled smoke conversation set (data/sft/smoke_conversations.jsonl) and its plain-text stand-in
(data/sft/smoke_textbook.jsonl): short, generated, deterministic, so that a tiny model learns the chat format
(where a reply starts, its fixed wording, where it ends) within a few dozen CPU iterations.

    python data/sft/make_smoke_set.py            # rewrites both files (same bytes every time)

Conversations are in the common `messages` layout: single-turn arithmetic, word reversal, counting and
capitalisation tasks; every fifth has a system message, every seventh a second turn, so every chat format's
system and multi-turn paths are exercised. Replies use one template per task ("The answer is 7.").
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = ["cat", "dog", "tree", "book", "lamp", "river", "stone", "cloud", "apple", "house", "bread", "chair",
         "green", "music", "light", "table", "water", "paper", "train", "plant"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
SYSTEMS = ["You are a helpful assistant.", "Answer briefly."]


def turn(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randrange(10), rng.randrange(10)
        return f"What is {a} plus {b}?", f"The answer is {a + b}."
    if kind == 1:
        word = rng.choice(WORDS)
        return f"Reverse the word {word}.", f"The reversed word is {word[::-1]}."
    if kind == 2:
        n = rng.randrange(1, 6)
        return f"Count to {NUMBERS[n]}.", "Counting: " + ", ".join(NUMBERS[1:n + 1]) + "."
    word = rng.choice(WORDS)
    return f"Write {word} in capital letters.", f"In capital letters: {word.upper()}."


def conversations(count: int = 400, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        messages = [{"role": "system", "content": SYSTEMS[i % 2]}] if i % 5 == 4 else []
        for _ in range(2 if i % 7 == 6 else 1):
            question, answer = turn(rng)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def textbook(count: int = 60, seed: int = 1) -> list[dict]:
    """Plain-text documents (trained on every token): the stand-in for CrystalChat's textbooks."""
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randrange(3, 7)):
            a, b = rng.randrange(10), rng.randrange(10)
            word = rng.choice(WORDS)
            sentences.append(rng.choice([f"Adding {a} and {b} gives {a + b}.",
                                         f"The word {word} has {len(word)} letters.",
                                         f"Read backwards, {word} is {word[::-1]}."]))
        docs.append({"text": " ".join(sentences)})
    return docs


def write(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.rename(path)


if __name__ == "__main__":
    write(HERE / "smoke_conversations.jsonl", conversations())
    write(HERE / "smoke_textbook.jsonl", textbook())

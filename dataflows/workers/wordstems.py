"""Word stems of a sentence, as an exec worker speaking JSON lines (dataflows/README.md).

For each sentence: the number of words, and the number of distinct word stems (a small
suffix-stripping stemmer: "jumps", "jumping" and "jumped" share the stem "jump").
The disruptor example, on flowd: dataflows/wordstems.toml runs it.
"""
import json
import re
import sys

WORD = re.compile(r"[a-z0-9']+")
SUFFIXES = ("ingly", "edly", "ing", "ies", "ied", "ed", "es", "ly", "s")


def stem(word):
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    # "running" -> "runn" -> "run": a doubled final consonant left by a cut suffix.
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiousl":
        word = word[:-1]
    return word


def answer(request):
    sentence = request["value"]
    if not isinstance(sentence, str):
        return {"id": request["id"], "error": "a sentence is a line of text"}
    words = WORD.findall(sentence.lower())
    stems = sorted({stem(w) for w in words})
    return {"id": request["id"], "values": [{"sentence": sentence, "total": len(words),
                                              "unique": len(stems), "stems": stems}]}


for line in sys.stdin:
    sys.stdout.write(json.dumps(answer(json.loads(line))) + "\n")
    # Answer now: flowd may be waiting for this answer before it sends more.
    sys.stdout.flush()

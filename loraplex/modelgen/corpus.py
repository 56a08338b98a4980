"""A deterministic training corpus for the byte-level BPE tokenizer.

The text is generated from fixed word lists with a seeded `random.Random`, whose integer-seeded
stream is stable across Python versions, so every machine trains the same tokenizer. It mixes
English prose, numbers, code, chat turns and some non-ASCII text so the merges resemble those of
a real tokenizer and common prompts encode to sensible tokens.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

CORPUS_SEED = 20240418


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


NOUNS = _words(
    """
time year people way day man woman child world life hand part place case week company system
program question work government number night point home water room mother area money story
fact month lot right study book eye job word business issue side kind head house service friend
father power hour game line end member law car city community name president team minute idea
kid body information back parent face others level office door health person art war history
party result change morning reason research girl guy moment air teacher force education foot
boy age policy music market sense nation plan college interest death experience effect class
control care field development role effort rate heart drug show leader light voice wife police
mind price report decision son view relationship town road arm difference value building action
model season society tax director position player record paper space ground form event official
matter center couple site project activity star table need court oil situation cost industry
figure street image phone data picture practice piece land product doctor wall patient worker
news test movie north love support technology step baby computer type attention film tree source
organization hair window evidence population site river garden server request token adapter
engine kernel memory cache batch tenant model layer weight network signal answer message letter
"""
)

VERBS = _words(
    """
is was has had does did says said gets got makes made goes went knows knew takes took sees saw
comes came thinks thought looks looked wants wanted gives gave uses used finds found tells told
asks asked works worked seems seemed feels felt tries tried leaves left calls called keeps kept
starts started helps helped shows showed hears heard plays played runs ran moves moved lives
lived believes believed brings brought happens happened writes wrote provides provided sits sat
stands stood loses lost pays paid meets met includes included continues continued learns
learned changes changed leads led understands understood watches watched follows followed stops
stopped creates created speaks spoke reads read allows allowed adds added spends spent grows
grew opens opened walks walked wins won offers offered remembers remembered loads loaded serves
served sends sent returns returned builds built stores stored computes computed
"""
)

ADJECTIVES = _words(
    """
good new first last long great little own other old right big high different small large next
early young important few public bad same able free sure clear full special easy strong certain
whole real best better true political short local late hard major human open possible white
black red blue green simple quick slow bright dark warm cold quiet happy careful ready fast
random tiny small main final current empty single common recent private similar
"""
)

ADVERBS = _words(
    """
also very often however too usually really early never always sometimes together likely simply
generally instead actually again rather almost especially ever quickly probably already below
directly therefore else thus easily eventually exactly certainly normally currently slowly
"""
)

FUNCTION_WORDS = _words(
    """
the a an this that these those my your his her its our their some every each any no
"""
)

PRONOUNS = _words(
    """
I you we they he she it someone everyone nobody
"""
)

CONJUNCTIONS = _words(
    """
and but or because so while when if although since until unless and and but
"""
)

GREETINGS = _words(
    """
Hello Hi Thanks Please Sure Yes No Okay Great Sorry Welcome Goodbye
"""
)

PREPOSITIONS = _words(
    """
in on at by for with about against between into through during before after above below to
from up down over under again near across behind beyond without within along around
"""
)

NAMES = _words(
    """
Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Leo Maria Nina Oscar Paul Quinn
Rosa Sam Tara Uma Victor Wendy Xavier Yara Zoe London Paris Berlin Tokyo Madrid Rome Oslo Cairo
Lima Seoul Monday Tuesday Wednesday Thursday Friday Saturday Sunday January March June October
"""
)

FOREIGN = _words(
    """
café naïve über señor façade déjà vu crème brûlée straße Grüße año niño mañana ça où très été
привет мир спасибо γειά σου κόσμε 你好 世界 谢谢 こんにちは 世界 ありがとう 안녕하세요 مرحبا שלום
"""
)

CODE_KEYWORDS = _words(
    """
def return if else elif for while in import from class self None True False try except with as
pass break continue lambda yield raise assert async await print len range list dict int str
"""
)

PUNCTUATION_ENDINGS = (".", ".", ".", "!", "?", "...", ";")


def _subject(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.25:
        return rng.choice(NAMES)
    if roll < 0.5:
        return rng.choice(PRONOUNS)
    return f"{rng.choice(FUNCTION_WORDS)} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


def _clause(rng: random.Random) -> str:
    words = [_subject(rng), rng.choice(VERBS), rng.choice(FUNCTION_WORDS), rng.choice(NOUNS)]
    if rng.random() < 0.6:
        words += [rng.choice(PREPOSITIONS), rng.choice(FUNCTION_WORDS), rng.choice(NOUNS)]
    if rng.random() < 0.4:
        words.insert(1, rng.choice(ADVERBS))
    if rng.random() < 0.2:
        words += [f"({rng.randint(1, 2030)})"]
    return " ".join(words)


def _sentence(rng: random.Random) -> str:
    text = _clause(rng)
    if rng.random() < 0.4:
        text += f", {rng.choice(CONJUNCTIONS)} {_clause(rng)}"
    if rng.random() < 0.1:
        text = f"{rng.choice(GREETINGS)}, {text}"
    return text[0].upper() + text[1:] + rng.choice(PUNCTUATION_ENDINGS)


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))


def _numbers(rng: random.Random) -> str:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    year, month, day = rng.randint(1900, 2030), rng.randint(1, 12), rng.randint(1, 28)
    price = rng.randint(1, 99999) / 100
    date = f"{year}-{month:02d}-{day:02d}"
    return f"{a} + {b} = {a + b}, {a} * {b} = {a * b}; on {date} it cost ${price:.2f}."


def _code(rng: random.Random) -> str:
    name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"
    arg = rng.choice(NOUNS)
    keyword = rng.choice(CODE_KEYWORDS)
    return (
        f"def {name}({arg}, count={rng.randint(0, 64)}):\n"
        f"    # {keyword}: {_sentence(rng)}\n"
        f"    if {arg} is None:\n"
        f"        return []\n"
        f"    return [{arg}[i] * 2 for i in range(count)]\n"
    )


def _chat(rng: random.Random) -> str:
    question = _sentence(rng).rstrip(".!?;") + "?"
    return f"User: {question}\nAssistant: {_paragraph(rng)}\n"


def _foreign(rng: random.Random) -> str:
    return " ".join(rng.choice(FOREIGN) for _ in range(rng.randint(3, 10))) + "."


def corpus_lines(num_lines: int = 6000) -> Iterator[str]:
    """Yields the same `num_lines` lines of mixed text on every call and every machine."""
    rng = random.Random(CORPUS_SEED)
    makers = (_paragraph, _paragraph, _paragraph, _numbers, _code, _chat, _foreign)
    for _ in range(num_lines):
        yield rng.choice(makers)(rng)

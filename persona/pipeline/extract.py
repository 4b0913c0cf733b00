"""Extraction: the names a message mentions and the first-person facts it states.

Rules only, no model, English and Japanese: this runs after the reply has streamed, on
every turn, so it must be deterministic and cheap (a few compiled patterns a sentence).
A model may refine the output later; these rules aim at precision over recall, because
a wrong fact becomes a wrong edge that later supersedes a right one.

Polarity lives in `Fact.negated`, never in the relation: "I hate jazz" and "I don't like
jazz anymore" are `likes jazz` negated, so a contradiction always shares the subject and
relation of what it contradicts (see `supersedes`). docs/memory.md has the vocabulary.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

# Relations (fixed vocabulary). Single-valued ones hold one current value per subject.
SINGLE_VALUED = frozenset(
    {"name_is", "age", "birthday", "lives_in", "from", "works_as", "works_at", "has_partner"}
)
MULTI_VALUED = frozenset(
    {"likes", "has_pet", "has_sibling", "has_child", "speaks", "studies", "goal"}
)
RELATIONS = SINGLE_VALUED | MULTI_VALUED


@dataclass(frozen=True)
class Fact:
    """One typed statement: `subject —relation→ object`, from the sentence `text`."""

    subject: str  # "user", "persona", or an entity name
    relation: str  # one of RELATIONS
    object: str  # normalized: trimmed, no leading "the/a/an" for likes/speaks/studies
    text: str  # the sentence it came from
    negated: bool = False  # "I don't like jazz anymore", "I hate jazz": likes jazz, negated


def single_valued(relation: str) -> bool:
    """Whether a subject holds one current value of `relation` (a new one replaces it)."""
    return relation in SINGLE_VALUED


def supersedes(new: Fact, old: Fact) -> bool:
    """Whether `new` invalidates the edge recorded from `old` (it is never deleted).

    Only an edge with the same subject and relation can be superseded. With the same
    object, the polarity must differ ("I don't like jazz anymore" retires `likes jazz`; a
    repeat supersedes nothing). With another object, only a positive value of a
    single-valued relation replaces a positive old one ("I moved to Porto" retires
    `lives_in Lisbon`; "I don't live in Lisbon" says nothing about Porto).
    """
    if new.subject != old.subject or new.relation != old.relation:
        return False
    if object_key(new.object) == object_key(old.object):
        return new.negated != old.negated
    return single_valued(new.relation) and not new.negated and not old.negated


def object_key(obj: str) -> str:
    """The form two objects are compared in: NFKC, case-folded, single spaces, no leading
    article ("the Beatles" is "Beatles")."""
    return _ARTICLE_RE.sub("", " ".join(unicodedata.normalize("NFKC", obj).casefold().split()))


# ---- sentences -------------------------------------------------------------------------

_TITLES = ("Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Mt")
_SENTENCE_RE = re.compile(
    r"(?:[^.!?。！？\n]|(?<=\b(?:Mr|Ms|Dr|St|Mt))\.|(?<=\bMrs)\.|(?<=\bProf)\.)+[.!?。！？]*"
)


def _sentences(text: str) -> list[str]:
    """Split NFKC text into sentences, keeping each one's end mark (questions need it)."""
    return [s.strip() for s in _SENTENCE_RE.findall(text) if s.strip()]


def _clean(text: str) -> str:
    return unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")


# ---- entities --------------------------------------------------------------------------

# Capitalized words that are not names when they open a sentence (or stand alone).
_STARTERS = frozenset(
    """a about actually after again all also although always an and another any anyway
    apparently are as at aw aww back basically be because been before being besides both
    but by can could did do does don't during each either else even every everyone
    everything few finally first for from good great guess had has have having he he's
    hello her here hers hey hi him his honestly hope how however i i'd i'll i'm i've if in
    indeed instead is isn't it it's its just last later let let's like look lol maybe me
    meanwhile mine more most much must my never nevertheless next nice no nobody none nor
    not nothing now of oh ok okay on once one only or other otherwise our ours over perhaps
    please probably quite rather really right same see seriously she she's should since so
    some someone something sometimes soon sorry still such sure thank thanks that that's
    the their theirs them then there there's these they they're this those though through
    thus to today tomorrow tonight too totally um uh under unfortunately until up us very
    was we we're well were what what's whatever when where whether which while who why
    will with without wow would yeah yes yesterday yet you you're your yours wait listen
    tell call remember guess imagine went got go going went come coming love loved anyway omg
    btw haha hmm yay ugh fine cool awesome dear sir madam mom mum dad""".split()
)
_FIRST_PERSON = frozenset({"i", "i'm", "i've", "i'd", "i'll", "im", "ive"})
# Dates are not entities: the memory keeps its own time, and "May" is also a verb.
_CALENDAR = frozenset(
    """january february march april may june july august september october november
    december monday tuesday wednesday thursday friday saturday sunday""".split()
)
_CONNECTORS = frozenset({"of", "de", "da", "del", "van", "von", "la", "le", "du", "y"})
_LATIN_WORD_RE = re.compile(r"[A-Za-z\u00c0-\u024f][A-Za-z\u00c0-\u024f'\-]*")
_OPENERS = set(':;"“”(—–')

_KANJI = "\u3400-\u9fff\uf900-\ufaff々"
_KATA = "\u30a1-\u30fa\u30fc"  # ァ..ヺ and ー (NFKC has folded the half-width forms)
_KATAKANA_RE = re.compile(rf"[{_KATA}・]+")
_HONORIFIC_RE = re.compile(
    rf"(?<![{_KANJI}おご])([{_KANJI}]{{1,4}})(?:さん|ちゃん|くん|君|様|さま|先生|先輩|氏)"
)
# Kinship and role words that take an honorific without being a name (姉さん, 皆さん).
_NOT_NAMES_JA = frozenset(
    "母 父 兄 姉 弟 妹 奥 皆 客 娘 嫁 爺 婆 叔父 叔母 伯父 伯母 息子 旦那 店員 大家 神 王".split()
)
_PLACE_CUE_RE = re.compile(rf"([{_KANJI}{_KATA}]{{2,6}})(?:には?住|へ引っ越|に引っ越|出身|在住)")


# Pronouns are never names, wherever they stand ("(laughs) You said ...").
_PRONOUNS = frozenset("you you're you've you'd you'll he she it we they me him her us them".split())


def _is_name_word(word: str, initial: bool) -> bool:
    low = word.lower()
    if low in _FIRST_PERSON or low in _PRONOUNS:
        return False
    return not (initial and low in _STARTERS)


def _latin_entities(sentence: str) -> list[str]:
    if not any(c.islower() for c in sentence):
        return []  # shouting: every word is capitalized, none is a name by that sign
    found: list[str] = []
    run: list[str] = []
    words = list(_LATIN_WORD_RE.finditer(sentence))
    prev_end = 0

    def close() -> None:
        while run and run[-1].lower() in _CONNECTORS:
            run.pop()
        if run:  # "Ana's dog" names Ana; "St. Mary's Hospital" keeps its possessive
            run[-1] = run[-1].removesuffix("'s").removesuffix("'")
        if run and not (len(run) == 1 and run[0].lower().removesuffix("s") in _CALENDAR):
            found.append(" ".join(run))
        run.clear()

    for i, m in enumerate(words):
        word = m.group()
        gap = sentence[prev_end : m.start()]
        initial = i == 0 or any(c in _OPENERS for c in gap) or "\n" in gap
        title = gap == ". " and bool(run) and run[-1] in _TITLES
        if run and not (gap == " " or title):
            close()
        if word[:1].isupper() and _is_name_word(word, initial):
            if title:
                run[-1] += "."  # keep "Dr. Smith" as written
            run.append(word)
        elif run and word in _CONNECTORS:
            run.append(word)
        else:
            close()
        prev_end = m.end()
    close()
    return found


def _japanese_entities(sentence: str) -> list[str]:
    found = [k.strip("・") for k in _KATAKANA_RE.findall(sentence)]
    found = [k for k in found if len(k.replace("ー", "")) >= 2]
    found += [n for n in _HONORIFIC_RE.findall(sentence) if n not in _NOT_NAMES_JA]
    found += _PLACE_CUE_RE.findall(sentence)
    return found


def entities(text: str) -> list[str]:
    """Names the text mentions, sorted and unique, as written (after NFKC).

    English: runs of capitalized words ("Lisbon", "New York", "University of Tokyo",
    "Dr. Smith"), except "I" and, when opening a sentence, common words ("The", "My",
    "Yesterday"); month and weekday names alone are dates, not entities. Japanese:
    katakana runs of two or more letters (アナ, ジャズ), kanji names before an honorific
    (田中さん -> 田中, not 母さん), and the place before 住む/引っ越す/出身/在住.
    """
    names: set[str] = set()
    for sentence in _sentences(_clean(text)):
        names.update(_latin_entities(sentence))
        names.update(_japanese_entities(sentence))
    return sorted(n for n in names if n)


# ---- facts: shared ---------------------------------------------------------------------

_QUESTION_START_RE = re.compile(
    r"^(?:do|does|did|are|is|was|were|have|has|can|could|would|will|should|shall|may|"
    r"what|why|how|where|when|who|whom|which|whose)\b",
    re.IGNORECASE,
)
_HYPOTHETICAL_RE = re.compile(
    r"\b(?:if|unless|would|wish|imagine|suppose|supposing|pretend|hypothetically|maybe|"
    r"perhaps|might|could|should|someday|whether)\b|'d\b",
    re.IGNORECASE,
)
_JA_QUESTION_RE = re.compile(r"(?:か|かな|かしら|の)[?？]?[。!！]*$|[?？]")
_JA_HYPOTHETICAL_RE = re.compile(r"もし|仮に|たら|なら(?!ない|ず)|れば|としたら|かも")
_PRONOUN_OBJECTS = frozenset(
    """it this that these those them you him her us me myself everything anything nothing
    something how what when where why who which whatever""".split()
)
_TRAILING_RE = re.compile(
    r"(?:\s+(?:now|anymore|any more|these days|nowadays|lately|recently|a lot|so much|"
    r"very much|too|as well|right now|at the moment|at all|already|again|though|honestly|"
    r"today|yesterday|tonight|forever|still|originally|lol|haha|tbh|"
    r"(?:last|this|next) (?:year|month|week|summer|winter|spring|fall|autumn|[a-z]+day|"
    r"january|february|march|april|may|june|july|august|september|october|november|december)|"
    r"(?:in|since) \d{4}|(?:\w+|a|an) (?:years?|months?|weeks?|days?) ago|a while ago|"
    r"for (?:\w+|a) (?:years?|months?|weeks?|days?|while|long time)))+$",
    re.IGNORECASE,
)
_BOUNDARY_RE = re.compile(
    r"\s*(?:[,;:!?()\"]|(?<!\bSt)(?<!\bDr)(?<!\bMr)(?<!\bMs)(?<!\bMrs)\.|\s(?:and|but|because|since|so|when|while|which|who|where|though|"
    r"although|until|with my|than|or|cause|cuz)\b).*$",
    re.IGNORECASE | re.DOTALL,
)
_ARTICLE_RE = re.compile(r"^(?:the|a|an)\s+")


def _phrase(raw: str, max_words: int = 6) -> str | None:
    """Cut an object phrase at the clause boundary, drop trailing time words; None if empty,
    a pronoun, or too long to be one thing."""
    obj = _BOUNDARY_RE.sub("", raw).strip()
    obj = _TRAILING_RE.sub("", obj).strip()
    if obj.lower().startswith("to "):
        obj = obj[3:]
    if not obj or obj.split()[0].lower() in _PRONOUN_OBJECTS or len(obj.split()) > max_words:
        return None
    return obj


# ---- facts: English --------------------------------------------------------------------

# Case-sensitive even inside IGNORECASE patterns: a name starts with a capital, which also
# keeps the search from trying every word as a subject.
_NAME = r"(?-i:\b[A-Z][A-Za-z\u00c0-\u024f'\-]*(?: [A-Z][A-Za-z\u00c0-\u024f'\-]*){0,2})"
_S = rf"(?P<s>\bI\b|{_NAME})"  # the speaker ("I") or a named third person
_MY = rf"(?P<s>\bmy|{_NAME}'s)\b"
_BE = r"(?:'m|'s| am| is)"
_ADV = (
    r"(?:(?:really|truly|absolutely|totally|just|still|also|genuinely|kinda|kind of|sort of|"
    r"do|does|definitely|so|actually|now|currently|recently|seriously|always|finally) )*"
)
_NOT = r"(?:don't|do not|doesn't|does not|no longer|never)"
_PETS = (
    r"dogs?|cats?|pupp(?:y|ies)|kittens?|rabbits?|bunn(?:y|ies)|hamsters?|parrots?|birds?|"
    r"goldfish|fish|turtles?|tortoises?|snakes?|lizards?|ferrets?|guinea pigs?|horses?|"
    r"budgies?|geckos?|chickens?"
)
_SIBLINGS = r"sisters?|brothers?|siblings?"
_CHILDREN = r"sons?|daughters?|kids?|children|child|bab(?:y|ies)"
_PARTNERS = r"husband|wife|boyfriend|girlfriend|partner|fianc[eé]e?|spouse"
_KIN = {"has_pet": _PETS, "has_sibling": _SIBLINGS, "has_child": _CHILDREN}
_OCCUPATIONS = (
    r"nurse|doctor|teacher|engineer|developer|programmer|designer|lawyer|accountant|chef|"
    r"cook|writer|artist|musician|student|professor|scientist|researcher|pharmacist|"
    r"dentist|architect|farmer|mechanic|electrician|plumber|carpenter|firefighter|"
    r"police officer|soldier|pilot|driver|waiter|waitress|barista|cashier|librarian|"
    r"journalist|photographer|manager|consultant|analyst|translator|therapist|"
    r"veterinarian|vet|paramedic|baker|tailor|painter|actor|actress|dancer|singer|"
    r"coach|trainer|salesperson|secretary|clerk|banker|economist|surgeon|midwife|"
    r"caregiver|social worker|tutor|freelancer|entrepreneur|retiree|intern"
)
_REST = r" (?P<o>.+)"

# (relation, negated, pattern); the object group `o` is cut by `_phrase`.
_EN_RULES: list[tuple[str, bool, str]] = [
    ("likes", False, rf"{_S} {_ADV}(?:love|like|enjoy|adore)s?{_REST}"),
    ("likes", False, rf"{_S}(?:'ve| have| has) {_ADV}(?:loved|liked|enjoyed){_REST}"),
    (
        "likes",
        False,
        rf"{_S}{_BE} {_ADV}(?:into|a (?:big |huge )?fan of|obsessed with|crazy about|"
        rf"passionate about){_REST}",
    ),
    ("likes", False, rf"{_MY} (?:favou?rite|fave)(?: \w+){{1,3}} (?:is|are){_REST}"),
    ("likes", True, rf"{_S} {_ADV}{_NOT} {_ADV}(?:love|like|enjoy)s?{_REST}"),
    ("likes", True, rf"{_S} {_ADV}(?:hate|dislike|detest|loathe|despise)s?{_REST}"),
    ("likes", True, rf"{_S} (?:can't|cannot|can not) stand{_REST}"),
    ("likes", True, rf"{_S}{_BE} not (?:into|a (?:big )?fan of){_REST}"),
    ("lives_in", False, rf"{_S} {_ADV}(?:live|reside)s? in{_REST}"),
    ("lives_in", False, rf"{_S}{_BE} {_ADV}living in{_REST}"),
    ("lives_in", False, rf"{_S}(?:'ve| have| has) {_ADV}(?:lived|been living) in{_REST}"),
    (
        "lives_in",
        False,
        rf"{_S}(?:(?:'ve| have| has))? {_ADV}(?:moved|relocated) (?:back )?to{_REST}",
    ),
    ("lives_in", True, rf"{_S} {_ADV}{_NOT} (?:live|reside)s? in{_REST}"),
    ("lives_in", True, rf"{_S} {_ADV}moved (?:out of|away from){_REST}"),
    ("from", False, rf"{_S}{_BE} {_ADV}(?:originally )?from{_REST}"),
    ("from", False, rf"{_S} {_ADV}(?:originally )?comes? from{_REST}"),
    ("from", False, rf"{_S} (?:grew up|was born) in{_REST}"),
    ("works_as", False, rf"{_S} {_ADV}works? as (?:an? )?{_REST[1:]}"),
    ("works_as", False, rf"{_S}{_BE} {_ADV}an? (?P<o>(?:\w+ )?(?:{_OCCUPATIONS}))\b"),
    ("works_as", True, rf"{_S}{_BE} (?:not|no longer) an? (?P<o>(?:\w+ )?(?:{_OCCUPATIONS}))\b"),
    ("works_as", True, rf"{_S} {_ADV}{_NOT} works? as (?:an? )?{_REST[1:]}"),
    ("works_at", False, rf"{_S} {_ADV}works? (?:as an? [\w -]+? )?(?:at|for){_REST}"),
    ("works_at", False, rf"{_S}{_BE} {_ADV}(?:employed|working) (?:at|by|for){_REST}"),
    ("works_at", False, rf"{_S}{_BE} an? (?:\w+ )?(?:{_OCCUPATIONS}) (?:at|for){_REST}"),
    (
        "works_at",
        False,
        rf"{_S} (?:got|started|have|'ve got) (?:a )?(?:new )?job (?:at|with){_REST}",
    ),
    ("works_at", True, rf"{_S} {_ADV}{_NOT} works? (?:at|for){_REST}"),
    ("works_at", True, rf"{_S} (?:quit|left) (?:my|his|her) (?:job|position) at{_REST}"),
    ("speaks", False, rf"{_S} {_ADV}(?:speaks?|can speak){_REST}"),
    ("speaks", False, rf"{_S}{_BE} {_ADV}fluent in{_REST}"),
    ("speaks", True, rf"{_S} {_ADV}{_NOT} speaks?{_REST}"),
    ("studies", False, rf"{_S} {_ADV}(?:stud(?:y|ies)|majors? in|learns?){_REST}"),
    ("studies", False, rf"{_S}{_BE} {_ADV}(?:studying|majoring in|learning){_REST}"),
    ("goal", False, rf"{_MY} (?:goal|dream|plan|aim|ambition|resolution) (?:is|'s) to{_REST}"),
    ("goal", False, rf"{_S}{_BE} {_ADV}(?:planning|hoping|aiming|trying) to{_REST}"),
    ("goal", False, rf"{_S} {_ADV}(?:plan|hope|intend)s? to{_REST}"),
    ("goal", False, rf"{_S} {_ADV}wants? to (?P<o>become .+)"),
]
_EN_COMPILED = [(rel, neg, re.compile(p, re.IGNORECASE)) for rel, neg, p in _EN_RULES]
# A cheap look for each relation's cue words first: most clauses state nothing, and these
# skip the full patterns for them (speed only; every rule still needs its full match).
_EN_CUES = {
    rel: re.compile(cue, re.IGNORECASE)
    for rel, cue in {
        "likes": r"lov|lik|enjoy|ador|hat|dislik|detest|loath|despis|stand|into|fan|obsess|"
        r"crazy|passion|favo",
        "lives_in": r"liv|resid|moved|relocat",
        "from": r"from|grew|born",
        "works_as": r"work|\ban?\b",
        "works_at": r"work|employ|job|\ban?\b",
        "speaks": r"speak|fluent",
        "studies": r"stud|major|learn",
        "goal": r"goal|dream|plan|aim|ambition|resolution|hop|trying|intend|want",
    }.items()
}

_NAME_IS_RES = [
    re.compile(r"\b(?P<s>my) name(?:'s| is) (?P<o>[^\W\d_][\w'\-]*(?: [^\W\d_][\w'\-]*)?)", re.I),
    re.compile(r"\b(?P<s>I)(?:'m| am) called (?P<o>[^\W\d_][\w'\-]*(?: [A-Z][\w'\-]*)?)", re.I),
    re.compile(r"\b(?P<s>I) go by (?P<o>[^\W\d_][\w'\-]*)", re.I),
    re.compile(r"\b(?:call me|calls me) (?P<o>[A-Z][\w'\-]*)(?P<s>)"),
    re.compile(rf"\b(?P<s>I)(?:'m| am) (?P<o>{_NAME})(?=\s*(?:$|[,.!;]| and | from ))"),
]
_DEMONYMS = frozenset(
    """american british english scottish irish welsh french german italian spanish
    portuguese dutch swiss swedish norwegian danish finnish polish russian ukrainian greek
    turkish chinese japanese korean vietnamese thai filipino indian pakistani mexican
    brazilian argentinian canadian australian egyptian nigerian kenyan christian muslim
    jewish catholic buddhist hindu atheist vegan vegetarian fine sorry okay ok good great
    here back home done ready sure happy sad tired new""".split()
)
_AGE_RES = [
    re.compile(
        r"\b(?P<s>I)(?:'m| am) (?P<o>\d{1,3})(?: years? old| yrs? old| y/?o)?"
        r"(?=\s*(?:$|[,.!;]|and\b|but\b|now\b|this\b|today\b))",
        re.I,
    ),
    re.compile(r"\b(?P<s>I) (?:just )?turned (?P<o>\d{1,3})\b", re.I),
]
_BIRTHDAY_RES = [
    re.compile(rf"{_MY} birthday(?:'s| is)(?: on)?{_REST}", re.I),
    re.compile(r"\b(?P<s>I) was born on (?P<o>.+)", re.I),
]
_NUMBERS = r"an?|one|two|three|four|five|\d+"
_HAS_RE = re.compile(
    rf"{_S}(?: {_ADV}(?:have|has|own|owns|adopted|got)|(?:'ve| have| has) got)"
    rf" (?P<n>{_NUMBERS}) (?:\w+ )?(?P<k>{_PETS}|{_SIBLINGS}|{_CHILDREN})\b"
    rf"(?:,? (?:named|called) (?P<name>[A-Z][\w'\-]*))?",
    re.I,
)
_HAS_NOT_RE = re.compile(
    rf"{_S} {_ADV}{_NOT} (?:have|has|own|owns) (?:an? |any )(?:\w+ )?(?P<k>{_PETS})\b", re.I
)
_MY_KIN_RE = re.compile(
    rf"\b(?P<s>my) (?:\w+ )?(?P<k>dog|cat|puppy|kitten|rabbit|hamster|parrot|bird|horse|"
    rf"sister|brother|son|daughter|kid|baby|{_PARTNERS}),? (?P<name>[A-Z][\w\-]*)"
    rf"(?P<died> (?:died|passed away|passed))?",
    re.I,
)
_PARTNER_RE = re.compile(
    rf"{_S}(?:(?:'ve| have| has)(?: got)?| {_ADV}(?:have|has)) (?:an?) (?P<k>{_PARTNERS})\b", re.I
)
_MARRIED_RE = re.compile(rf"{_S}{_BE} (?P<not>not )?married\b(?: to (?P<name>\w+))?", re.I)
_CLAUSE_RE = re.compile(
    r";|,?\s+(?:and|but|so|because|though|although|while)\s+(?=(?:I|my)\b)", re.I
)
_LIST_RE = re.compile(r",\s*(?:and\s+)?|\s+and\s+")
_PREPOSITIONS = frozenset({"at", "in", "for", "with", "on", "hard", "abroad", "online", "about"})
_COGNITIVE = frozenset({"think", "believe", "know", "say", "imagine", "talk", "chat", "ask"})


def _subject(m: re.Match[str], speaker: str) -> str | None:
    """ "I"/"my" is the speaker; anything else must be a name (capitalized, not a common
    word), else the match is no fact."""
    s = m.group("s")
    if s is None or s == "" or s.lower() in ("i", "my"):
        return speaker
    s = s.removesuffix("'s")
    words = s.split()
    if not all(w[:1].isupper() for w in words):
        return None
    if any(
        w.lower() in _STARTERS or w.lower() in _FIRST_PERSON or w.lower() in _CALENDAR
        for w in words
    ):
        return None
    return s


def _searches(pattern: re.Pattern[str], clause: str) -> list[re.Match[str]]:
    """Every non-overlapping-start match, so a rejected subject does not hide a later one."""
    found: list[re.Match[str]] = []
    pos = 0
    while (m := pattern.search(clause, pos)) is not None:
        found.append(m)
        pos = m.start() + 1
    return found


def _article(n: str, kind: str) -> str:
    n = n.lower()
    if n in ("a", "an", "one"):
        return ("an " if kind[:1] in "aeiou" else "a ") + kind
    return f"{n} {kind}"


def _english_facts(clause: str, speaker: str, sentence: str) -> list[Fact]:
    out: list[Fact] = []

    def add(m: re.Match[str], relation: str, obj: str | None, negated: bool = False) -> None:
        subject = _subject(m, speaker)
        if subject is not None and obj:
            out.append(Fact(subject, relation, obj, sentence, negated))

    cued = {rel for rel, cue in _EN_CUES.items() if cue.search(clause)}
    for relation, negated, pattern in _EN_COMPILED:
        if relation not in cued:
            continue
        for m in _searches(pattern, clause):
            obj = _phrase(m.group("o"))
            if obj is None:
                continue
            first = obj.split()[0].lower()
            if relation in ("works_as", "goal") and "you" in obj.lower().split():
                continue
            if relation == "works_as":
                obj = re.sub(r"\s(?:at|for|in)\s.*$", "", obj, flags=re.I)
            if relation == "studies" and first in _PREPOSITIONS:
                continue
            if relation == "likes" and (first in ("your", "to") or first in _COGNITIVE):
                continue
            if relation == "speaks":  # a list of languages: "Spanish, French and Greek"
                for part in _LIST_RE.split(m.group("o")):
                    lang = _phrase(part)
                    if lang is None or not lang[:1].isupper():
                        break
                    add(m, relation, lang, negated)
                    if lang != part.strip():
                        break
                continue
            add(m, relation, obj, negated)
    for pattern in _NAME_IS_RES:
        for m in _searches(pattern, clause):
            name = _phrase(m.group("o"))
            if name is None or name.lower() in _DEMONYMS or name.lower() in _STARTERS:
                continue
            add(m, "name_is", name)
    for pattern in _AGE_RES:
        for m in _searches(pattern, clause):
            if 0 < int(m.group("o")) <= 120:
                add(m, "age", m.group("o"))
    for pattern in _BIRTHDAY_RES:
        for m in _searches(pattern, clause):
            add(m, "birthday", _phrase(m.group("o")))
    for m in _searches(_HAS_RE, clause):
        kind = m.group("k").lower()
        relation = next(r for r, p in _KIN.items() if re.fullmatch(p, kind))
        obj = _article(m.group("n"), kind)
        name = m.group("name")
        if name and name[:1].isupper():
            obj += f" named {name}"
        add(m, relation, obj)
    for m in _searches(_HAS_NOT_RE, clause):
        add(m, "has_pet", _article("a", m.group("k").lower()), negated=True)
    for m in _searches(_MY_KIN_RE, clause):
        name, kind = m.group("name"), m.group("k").lower()
        if not name[:1].isupper() or name.lower() in _STARTERS or name.lower() in _CALENDAR:
            continue
        relation = next((r for r, p in _KIN.items() if re.fullmatch(p, kind)), "has_partner")
        add(m, relation, f"{_article('a', kind)} named {name}", negated=bool(m.group("died")))
    for m in _searches(_PARTNER_RE, clause):
        add(m, "has_partner", _article("a", m.group("k").lower()))
    for m in _searches(_MARRIED_RE, clause):
        name = m.group("name")
        if name is not None and not name[:1].isupper():
            continue  # "married to my job"
        obj = f"a spouse named {name}" if name else "a spouse"
        add(m, "has_partner", obj, negated=bool(m.group("not")))
    return out


# ---- facts: Japanese -------------------------------------------------------------------

_K = rf"{_KANJI}{_KATA}A-Za-z0-9・"
_JA_FIRST_TOPIC_RE = re.compile(r"^(?:私|わたし|僕|ぼく|俺|おれ|あたし|うち|自分)(?:は|も|、)")
_JA_KIN = r"お?母さん|お?父さん|お?兄さん|お?姉さん|母|父|兄|姉|弟|妹|息子|娘|夫|妻|彼氏|彼女|旦那"
_JA_THIRD_RE = re.compile(
    rf"^(?:(?:私|僕|俺|うち)の)?(?:{_JA_KIN}|彼|あの人|友達|友人|同僚|上司|先生|みんな)"
    r"(?:は|が|も|には)"
)
_JA_NAMED_RE = re.compile(rf"^([{_K}]+?)(?:さん|ちゃん|くん|君|様|先生)(?:は|が|も)")
_JA_TAIL_RE = re.compile(rf"(?:[{_K}]+の)*[{_K}]+$")
_JA_SPLIT_RE = re.compile(rf"(?<=[{_K}])[はもをにでが]|[、\s]")
_OCCUPATION_SUFFIX_RE = re.compile(r"(?:師|士|員|者|家|手|医|官|職|長|ナー|ター|スト|マン)$")

# (relation, negated, cue): the object is the noun just before the cue (`_ja_tail`).
_JA_CUES: list[tuple[str, bool, str]] = [
    (
        "likes",
        False,
        r"(?:が|も|は)(?:大|一番|とても|すごく|本当に|めっちゃ|超)?好き(?!な[^んの]|じゃ|では)",
    ),
    ("likes", False, r"(?:にハマって|にはまって)"),
    ("likes", True, r"(?:が|も|は)(?:あまり|もう)?好き(?:じゃ|では)(?:ない|なく|ありません)"),
    ("likes", True, r"(?:が|も|は)(?:大)?嫌い(?!じゃ|では)"),
    ("likes", True, r"(?:が|は)苦手(?!じゃ|では)"),
    ("lives_in", False, r"には?住んで(?:いる|る|います|ます|いて)"),
    ("lives_in", False, r"(?:に|へ)引っ越(?:した|しました|してきた|してきました)"),
    ("lives_in", False, r"在住"),
    ("lives_in", True, r"には?(?:もう)?住んで(?:いない|ない|いません|ません)"),
    ("from", False, r"(?:の)?出身"),
    ("from", False, r"から来(?:た|ました)"),
    ("works_as", False, r"として(?:[^、。]{0,12}?で)?働(?:いて|く|きます)"),
    ("works_as", False, r"を(?:して|やって)(?:いる|る|います|ます)"),
    ("works_at", False, r"で働(?:いて|く|きます)"),
    ("works_at", False, r"に勤め(?:て|ています)|に?勤務"),
    ("speaks", False, r"(?:を|が)(?:話せ|話し|話す|しゃべれ)"),
    ("studies", False, r"を(?:勉強して|専攻して|学んで|習って)(?:いる|る|います|ます|いて)"),
    ("goal", False, r"を目指して"),
    ("goal", False, r"になりたい"),
]
_JA_CUE_RES = [(rel, neg, re.compile(cue)) for rel, neg, cue in _JA_CUES]
_JA_END = r"(?:です|だよ|だ|でした|かな)?[。!！]*$"
_JA_EXPLICIT: list[tuple[str, re.Pattern[str]]] = [
    (
        "name_is",
        re.compile(
            rf"名前(?:は|が)(?P<o>[{_K}ぁ-ゖ]+?)(?:です|だ|といいます|と申します|{_JA_END})"
        ),
    ),
    ("name_is", re.compile(rf"(?P<o>[{_K}]+)(?:と申します|といいます|と言います|って呼んで)")),
    (
        "age",
        re.compile(
            r"(?<![0-9])(?P<o>\d{1,3})(?:歳|才)(?!の)(?:です|だ|になった|になりました|[。!！]|$)"
        ),
    ),
    ("birthday", re.compile(r"誕生日は(?P<o>\d{1,2}月\d{1,2}日)")),
    (
        "likes",
        re.compile(
            rf"^(?:(?:私|僕|俺)の)?(?:一番)?(?:好きな(?!人)[^は、。]{{1,8}}|趣味)は(?P<o>[^、。]+?){_JA_END}"
        ),
    ),
    ("works_as", re.compile(rf"(?:仕事|職業)は(?P<o>[^、。]+?){_JA_END}")),
    ("goal", re.compile(rf"(?:目標|夢)は(?P<o>[^、。]+?)(?:こと)?{_JA_END}")),
]
_JA_PETS = r"犬|猫|いぬ|ねこ|ウサギ|うさぎ|ハムスター|インコ|金魚|鳥|カメ|亀|フェレット|熱帯魚"
_JA_HAVE: list[tuple[str, re.Pattern[str]]] = [
    (
        "has_pet",
        re.compile(
            rf"(?:(?P<name>[{_KATA}]+)という)?(?P<k>{_JA_PETS})(?:を|は)(?:[0-9一二三]+匹)?飼って"
            r"(?:(?P<pos>いる|る|います|ます)|(?P<neg>いない|ない|いません|ません))"
        ),
    ),
]
for _rel, _kin in (
    ("has_sibling", "姉|兄|妹|弟|姉妹|兄弟"),
    ("has_child", "息子|娘|子供|子ども"),
    ("has_partner", "夫|妻|彼氏|彼女|旦那|婚約者|パートナー"),
):
    _JA_HAVE.append(
        (
            _rel,
            re.compile(
                rf"(?P<k>{_kin})(?:が(?:[0-9一二三四五]+人)?(?P<pos>いる|います|いて)"
                r"|(?:は|も)(?P<neg>いない|いません))"
            ),
        )
    )


def _ja_tail(before: str) -> str | None:
    """The noun just before a cue: the last kanji/katakana/Latin run (with its の-chain),
    else the last hiragana chunk after a particle; a trailing する/の/こと is dropped."""
    before = before.rstrip("、 ")
    m = _JA_TAIL_RE.search(before)
    obj = m.group() if m else _JA_SPLIT_RE.split(before)[-1]
    for suffix in ("こと", "の", "する"):
        obj = obj.removesuffix(suffix)
    return obj if 0 < len(obj) <= 20 else None


def _japanese_facts(sentence: str, speaker: str) -> list[Fact]:
    out: list[Fact] = []
    body = _JA_FIRST_TOPIC_RE.sub("", sentence)
    for relation, pattern in _JA_HAVE:
        m = pattern.search(body)
        if (
            m is None
            or _JA_THIRD_RE.search(body[: m.start()])
            or _JA_NAMED_RE.match(body[: m.start()])
        ):
            continue
        obj = m.group("k")
        if m.groupdict().get("name"):
            obj = f"{m.group('name')}という{obj}"
        out.append(Fact(speaker, relation, obj, sentence, negated=m.group("neg") is not None))
    subject = speaker
    if _JA_THIRD_RE.match(body):
        return out
    named = _JA_NAMED_RE.match(body)
    if named:
        subject, body = named.group(1), body[named.end() :]
    for relation, negated, cue in _JA_CUE_RES:
        m = cue.search(body)
        if m is None:
            continue
        obj = _ja_tail(body[: m.start()])
        if obj is None:
            continue
        if relation == "works_as" and "して" in m.group() and not _OCCUPATION_SUFFIX_RE.search(obj):
            continue  # 料理をしている is cooking, 看護師をしている is a job
        if relation == "speaks" and not obj.endswith("語"):
            continue
        if relation == "goal" and m.group() == "になりたい":
            obj += "になる"
        out.append(Fact(subject, relation, obj, sentence, negated))
    for relation, pattern in _JA_EXPLICIT:
        m = pattern.search(body)
        if m is None:
            continue
        obj = m.group("o").strip()
        if relation == "age" and subject == speaker and named is None:
            out.append(Fact(subject, relation, obj, sentence))
        elif relation != "age" and obj:
            if relation == "name_is" and subject != speaker:
                continue
            out.append(Fact(subject, relation, obj, sentence))
    return out


# ---- facts -----------------------------------------------------------------------------


def _is_question(sentence: str) -> bool:
    if sentence.endswith(("?", "？")):
        return True
    if _QUESTION_START_RE.match(sentence) and not _JA_CHAR_RE.search(sentence):
        return True
    return bool(_JA_CHAR_RE.search(sentence) and _JA_QUESTION_RE.search(sentence))


_JA_CHAR_RE = re.compile(rf"[\u3040-\u309f{_KATA}{_KANJI}]")


def facts(text: str, speaker: Literal["user", "persona"]) -> list[Fact]:
    """Facts the text states: first-person statements about the speaker, and simple
    statements about a named third person ("Ana lives in Lisbon", アナさんは…).

    Questions, conditionals and hypotheticals ("if I lived in Paris", "I'd love to",
    もし…たら) state nothing; neither do pronoun subjects ("she likes jazz") or past
    states ("I lived in Paris"). Deterministic, in sentence order, duplicates removed.
    """
    out: list[Fact] = []
    for sentence in _sentences(_clean(text)):
        if _is_question(sentence):
            continue
        if _JA_CHAR_RE.search(sentence):
            if _JA_HYPOTHETICAL_RE.search(sentence):
                continue
            out.extend(_japanese_facts(sentence, speaker))
        elif not _HYPOTHETICAL_RE.search(sentence):
            for clause in _CLAUSE_RE.split(sentence):
                out.extend(_english_facts(clause, speaker, sentence))
    return list(dict.fromkeys(out))

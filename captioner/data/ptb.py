"""coco-caption's PTB tokenisation, in pure Python (and a batch call of the Java original, for checks).

pycocoevalcap's ``PTBTokenizer`` writes all captions of one batch into a file, one a line (newlines
inside a caption become spaces), runs ``edu.stanford.nlp.process.PTBTokenizer -preserveLines
-lowerCase`` from stanford-corenlp 3.4.1 on it, and drops every output token found in its
``PUNCTUATIONS`` list (upper-case ``-LRB-`` and friends never match the lower-cased output, so
``-lrb-`` / ``-rrb-`` stay). :func:`ptb_tokenize` reproduces that without Java.

The Python tokenizer is a longest-match scanner, as the JFlex lexer behind PTBTokenizer is: at each
position every rule is tried, the longest match wins (trailing context counts towards the length but
is not consumed), and ties go to the earlier rule. The rules below were written and checked against
the output of the 3.4.1 jar that pycocoevalcap bundles (Flickr8k, COCO captions and many hand-made
and random strings; ``research/check_ptb_tokenizer.py`` repeats the comparison). They cover what
captions contain -- words, contractions, possessives, hyphens, slashes, numbers, abbreviations and
acronyms, quotes, brackets, ellipses, currency, e-mail addresses and URLs, simple SGML tags -- and
the common Unicode letters, quotes and dashes. Where the lexer looks past the end of a line (an
abbreviation at the end of one caption followed by a capital at the start of the next), the batch
functions see the same context the Java tokenizer sees, so :func:`ptb_tokenize_many` matches a
pycocoevalcap batch given in the same order.

Known limits: Java lower-cases a capital sigma by looking at word boundaries, approximated here
within the token (only matters for Greek capitals inside mixed-script tokens); characters outside
the Basic Multilingual Plane are dropped, as the lexer drops them.

Line breaks other than ``\\n`` (``\\r``, U+2028, ...) make the Java tokenizer start a new output line,
which shifts every later caption of a pycocoevalcap batch onto the wrong image. Both functions here
treat them as spaces instead (:func:`java_ptb_tokenize_many` replaces them before calling Java), so
that one caption in gives one caption out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = [
    "PUNCTUATIONS",
    "java_available",
    "java_ptb_tokenize_many",
    "ptb_tokenize",
    "ptb_tokenize_many",
    "ptb_tokens",
]

# pycocoevalcap/tokenizer/ptbtokenizer.py: tokens removed after tokenisation (compared after lower-casing).
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])

# Line breaks the lexer knows; coco joins captions with "\n", the others are made spaces (see above).
_LINE_BREAKS = re.compile("\r\n|[\r\u2028\u2029\x0b\x0c\x85]")


# ---------------------------------------------------------------------------------------------------
# character classes
# ---------------------------------------------------------------------------------------------------
def _char_class(predicate, extra: str = "") -> str:
    """A regex character class (without brackets) of the BMP characters that satisfy `predicate`."""
    ranges = []
    start = prev = None
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            ok = False
        else:
            ok = predicate(chr(code))
        if ok:
            if start is None:
                start = code
            prev = code
        elif start is not None:
            ranges.append((start, prev))
            start = None
    if start is not None:
        ranges.append((start, prev))
    parts = []
    for a, b in ranges:
        parts.append(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}")
    return "".join(parts) + extra


# Letters and digits of the Unicode version this Python knows that the 3.4.1 lexer (built on an
# older Unicode) does not know; found by running every BMP character through the jar.
_NEWER_UNICODE = (
    "037f 0528-052f 0560 0588 05ef 0860-086a 0870-0887 0889-088e 08a1 08ad-08c9 0978 0980 09fc 0af9 0c34"
    " 0c5a 0c5d 0c80 0cdd 0d04 0d54-0d56 0d5f 0de6-0def 0e86 0e89 0e8c 0e8e-0e93 0e98 0ea0 0ea8-0ea9 0eac"
    " 13f5 13f8-13fd 16f1-16f8 170d 171f 1878 191d-191e 19b0-19c0 19c8-19c9 1b4c 1c80-1c88 1c90-1cba"
    " 1cbd-1cbf 1cf2-1cf3 1cfa 2c2f 2c5f 312e-312f 31bb-31bf 4db6-4dbf 9fcd-9fff a698-a69d a78f a794-a79f"
    " a7ab-a7ca a7d0-a7d1 a7d3 a7d5-a7d9 a7f2-a7f7 a8fd-a8fe a9e0-a9e4 a9e6-a9fe aa7e-aa7f ab30-ab5a"
    " ab5c-ab69 ab70-abbf"
)


@lru_cache(maxsize=1)
def _newer_unicode() -> frozenset[int]:
    out = set()
    for item in _NEWER_UNICODE.split():
        a, _, b = item.partition("-")
        out.update(range(int(a, 16), int(b or a, 16) + 1))
    return frozenset(out)


def _is_letter(ch: str) -> bool:
    if ch in "\u1885\u1886":  # letters (Lo) in the lexer's Unicode, combining marks now
        return True
    return unicodedata.category(ch) in ("Lu", "Ll", "Lt", "Lm", "Lo") and ord(ch) not in _newer_unicode()


def _is_digit(ch: str) -> bool:
    return unicodedata.category(ch) == "Nd" and ord(ch) not in _newer_unicode()


# Letters as the lexer sees them: Unicode letters plus soft hyphen, combining marks and a few other
# ranges the lexer counts as word-internal.
_LETTER_EXTRA = (
    "\\u00ad\\u0237-\\u024f\\u02c2-\\u02c5\\u02d2-\\u02df\\u02e5-\\u02ff\\u0300-\\u036f\\u0370-\\u037d"
    "\\u0384\\u0385\\u03cf\\u03f6\\u03fc-\\u03ff\\u0483-\\u0487\\u04cf\\u04f6-\\u04ff\\u0510-\\u0525"
    "\\u055a-\\u055f\\u0591-\\u05bd\\u05bf\\u05c1\\u05c2\\u05c4\\u05c5\\u05c7\\u0615-\\u061a"
    "\\u063b-\\u063f\\u064b-\\u065e\\u0670\\u06d6-\\u06ef\\u06fa-\\u06ff\\u070f\\u0711\\u0730-\\u074f"
    "\\u0750-\\u077f\\u07a6-\\u07b1\\u07ca-\\u07f5\\u07fa\\u0900-\\u0903\\u093c\\u093e-\\u094e"
    "\\u0951-\\u0955\\u0962-\\u0963\\u0981-\\u0983\\u09bc-\\u09c4\\u09c7\\u09c8\\u09cb-\\u09cd\\u09d7"
    "\\u09e2\\u09e3\\u0a01-\\u0a03\\u0a3c\\u0a3e-\\u0a4f\\u0a81-\\u0a83\\u0abc-\\u0acf\\u0b82"
    "\\u0bbe-\\u0bc2\\u0bc6-\\u0bc8\\u0bca-\\u0bcd\\u0c01-\\u0c03\\u0c3e-\\u0c56\\u0d3e-\\u0d44"
    "\\u0d46-\\u0d48\\u0e30-\\u0e3a\\u0e47-\\u0e4e\\u0eb1-\\u0ebc\\u0ec8-\\u0ecd"
)


@lru_cache(maxsize=1)
def _classes() -> dict[str, str]:
    letter = _char_class(_is_letter)
    digit = _char_class(_is_digit)
    return {
        "D": f"[{digit}\\u07c0-\\u07c9]",    # [:digit:]
        "L": f"[{letter}]",                      # [:letter:]
        "LX": f"(?:[{letter}{_LETTER_EXTRA}]|&[aeiouAEIOU](?i:acute|grave|uml);)",  # word letter
        "LD": f"[{letter}{digit}]",              # [:letter:] or [:digit:]
    }


# ---------------------------------------------------------------------------------------------------
# the rules
# ---------------------------------------------------------------------------------------------------
def _macros() -> dict[str, str]:
    c = _classes()
    m: dict[str, str] = {}
    m["L"], m["LX"], m["LD"] = c["L"], c["LX"], c["LD"]
    m["SPACE"] = "[ \\t\\u00a0\\u2000-\\u200a\\u3000]"
    m["NEWLINE"] = "(?:\\r\\n?|\\n|\\u2028|\\u2029|\\x0b|\\x0c|\\x85)"
    m["SPACENL"] = f"(?:{m['SPACE']}|{m['NEWLINE']})"
    m["D"] = c["D"]
    d = m["D"]
    tag_name = "[A-Za-z][A-Za-z0-9_:.\\-]*"
    m["SGML"] = (
        "<(?:[!?][A-Za-z\\-][^>\\r\\n]*"
        f"|{tag_name}(?:[ ]+(?:{tag_name}(?:[ ]*=[ ]*(?:'[^'\\r\\n]*'|\"[^\"\\r\\n]*\"))?))*[ ]*/?"
        f"|/{tag_name}[ ]*)>"
    )
    m["SENTEND"] = f"{m['SPACENL']}(?:{m['SPACENL']}|[A-Z]|{m['SGML']})"
    m["APOS"] = "(?:['\\u0092\\u2019]|(?i:&apos;))"
    m["APOSETC"] = f"(?:{m['APOS']}|[`\\u0091\\u2018\\u201b])"
    lx = m["LX"]
    m["WORD"] = f"{lx}(?:{lx}|{d})*(?:[.!?]{lx}(?:{lx}|{d})*)*"
    m["REDAUX"] = f"{m['APOS']}(?:[msdMSD]|(?i:re|ve|ll))"
    m["SWORD"] = "[A-Za-z\\u00ad]*[A-MO-Za-mo-z]\\u00ad*"
    m["SREDAUX"] = f"(?i:n){m['APOSETC']}(?i:t)"
    m["NUM"] = f"(?:{d}*(?:[.:,\\u00ad\\u066b\\u066c]{d}+)+|{d}+)"
    m["NUMBER"] = f"[\\-+]?{m['NUM']}"
    m["HYPHEN"] = "[\\-_\\u058a\\u2010\\u2011]"
    # longer alternatives first: inside a larger pattern the first that fits is taken
    m["ACRO_ALTS"] = [
        "(?i:u)\\.(?i:s)\\.-(?:(?i:u)\\.(?i:s)\\.(?i:s)\\.(?i:r)|(?i:u)\\.(?i:k))",
        "(?i:canada|sino|korean|eu|japan|non)-(?i:u)\\.(?i:s)",
        "[A-Za-z](?:\\.[A-Za-z])+",
    ]
    m["ACRO"] = "(?:" + "|".join(m["ACRO_ALTS"]) + ")"
    return m


_ACRONYM_FOLLOWERS = (
    "[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere"
    "|[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\\.|[M]s\\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur"
    "|[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e"
    "|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou"
)
# Capitalised-first-letter words above: the first letter is case-sensitive, the rest is caseless.
_ACRONYM_FOLLOWERS = re.sub(r"\[(\w)\](\w*)", lambda mm: mm.group(1) + (f"(?i:{mm.group(2)})" if mm.group(2) else ""),
                            _ACRONYM_FOLLOWERS)


def _ci(alternatives: str) -> str:
    """Caseless alternatives, except letters written as one-letter classes like [A]."""
    out = []
    for alt in alternatives.split("|"):
        pieces = re.split(r"(\[\w\])", alt)
        out.append("".join(p if p.startswith("[") else (f"(?i:{p})" if p else "") for p in pieces))
    return "(?:" + "|".join(out) + ")"


def _rules():
    m = _macros()
    L, LX, LD, D = m["L"], m["LX"], m["LD"], m["D"]
    SPACE, SPACENL = m["SPACE"], m["SPACENL"]
    APOS, APOSETC = m["APOS"], m["APOSETC"]
    WORD, ACRO, HYPHEN = m["WORD"], m["ACRO"], m["HYPHEN"]

    abmonth = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
    abdays = "Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
    abstate = ("Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans|Kan|Ky|[L]a|[M]ass|Md"
               "|Mich|Minn|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc|Wis|Wyo")
    abcomp = ("Inc|Cos|Co|Corp|Ppt[y]s|Ppt[y]|Ppt[e]s|Ppt[e]|Pt[y]s|Pt[y]|Pt[e]s|Pt[e]|Ltd|Plc|Rt|Bancorp|Bhd"
              "|Assn|Univ|Intl|Sys")
    abnum = "tel|est|ext|sq"
    abptit = "Jr|Sr|Bros|Ed\\.D|Ph\\.D|Blvd|Rd|Esq"
    abbrev1 = _ci("|".join([abmonth, abdays, abstate, abcomp, abnum, abptit, "etc|al|seq|Bldg"])) + "\\."
    abtitle = ("Mr|Mrs|Ms|[M]iss|Drs|Dr|Profs|Prof|Sens|Sen|Reps|Rep|Attys|Atty|Lt|Col|Gen|Messrs|Govs|Gov"
               "|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste|St|Ave|Pres|Lieut|Hon|Brig|Comdr|Cmdr|Pfc|Spc|Supts|Supt"
               "|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc")
    abcomp2 = "Invt|Elec|Natl|Mfg|Mtg|Dept"
    abbrev4 = [_ci(abtitle), _ci("vs|Alex|Wm|Jos|Cie|a.k.a|cf|TREAS|Ph").replace("a.k.a", "a\\.k\\.a"),
               _ci(abcomp2), *m["ACRO_ALTS"], "[A-Za-z]"]
    abbrev3 = _ci("ca|figs|fig|prop|nos|no|art|bldg|pp|op") + "\\."

    thing_part = f"(?:[dDoOlL]{APOSETC}{LD})?{LD}+"
    thing = f"{thing_part}(?:{HYPHEN}{thing_part})*"
    hthing = f"[A-Za-z0-9][A-Za-z0-9.,\\u00ad]*(?:-(?:{ACRO}\\.|[A-Za-z0-9\\u00ad]+))+"
    thinga = "[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"
    thing3 = "[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
    apoword = ([
        f"{APOS}(?i:n){APOS}?", f"[lLdDjJ]{APOS}", f"(?i:dunkin){APOS}", f"(?i:somethin){APOS}",
        f"(?i:ol){APOS}", f"{APOS}(?i:em)", f"[A-HJ-XZn]{APOSETC}{L}{{2}}{L}*", f"{APOS}[2-9]0(?i:s)",
        f"{APOS}(?i:till?)", f"{L}{L}*[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]{L}*", f"{APOS}(?i:cause)",
        "(?i:cont'd)\\.?", "(?i:nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)",
        f"(?i:o){APOSETC}(?i:o)",
    ])
    fullurl = "(?i:https?)://[^ \\t\\n\\f\\r\"<>|(){}]+[^ \\t\\n\\f\\r\"<>|.!?(){},\\-]"
    url_path = "(?:/[^ \\t\\n\\f\\r\"<>|()]+[^ \\t\\n\\f\\r\"<>|.!?(){},\\-])?"
    # note: ",-_" in the lexer's second class is the range U+002C-U+005F (digits, capitals, ...)
    likelyurl = ["(?i:www)\\.(?:[^ \\t\\n\\f\\r\"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4}" + url_path,
                 "(?:[^ \\t\\n\\f\\r\"`'<>|.!?(){},-_$]+\\.)+(?i:com|net|org|edu)" + url_path]
    email = ("(?:(?i:&lt;)|<)?[a-zA-Z0-9][^ \\t\\n\\f\\r\"<>|(){}\\u00a0]*@(?:[^ \\t\\n\\f\\r\"<>|(){}.\\u00a0]+\\.)*"
             "[^ \\t\\n\\f\\r\"<>|(){}.\\u00a0]+(?:(?i:&gt;)|>)?")
    twitter = ["@[a-zA-Z_][a-zA-Z_0-9]*", f"#{LX}+"]
    date = f"{D}{{1,2}}[\\-/]{D}{{1,2}}[\\-/]{D}{{2,4}}"
    frac = f"(?:{D}{{1,4}}[\\- \\u00a0])?{D}{{1,4}}(?:\\\\?/|\\u2044){D}{{1,4}}"
    phone = ["\\([0-9]{2,3}\\)[ \\u00a0]?[0-9]{3,4}[\\- \\u00a0]?[0-9]{3,5}",
             "(?:\\+\\+?)?(?:[0-9]{2,4}[\\- \\u00a0])?[0-9]{2,4}[\\- \\u00a0][0-9]{3,4}[\\- \\u00a0]?[0-9]{3,5}",
             "(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}"]
    tbspec = (f"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c)\\.(?i:d)\\.(?i:s)|(?i:pro)-|(?i:anti)-"
              f"|(?i:s)(?:&|(?i:&amp;))(?i:p)-500|(?i:s)(?:&|(?i:&amp;))(?i:ls)|(?i:cap){APOS}(?i:n)"
              f"|(?i:c){APOS}(?i:est)")
    ldots = ["\\.{3,5}", "(?:\\.[ \\u00a0]){2,4}\\.", "[\\u0085\\u2026]"]
    quotes = [APOS, "''", "[`\\u2018\\u2019\\u201a\\u201b\\u201c\\u201d\\u0091\\u0092\\u0093\\u0094"
              "\\u201e\\u201f\\u2039\\u203a\\u00ab\\u00bb]{1,2}"]
    dblquot = "\"|(?i:&quot;)"
    smiley = "[<>]?[:;=][\\-o*']?[()DPdpO\\\\{@|\\[\\]]"
    asiansmiley = ["[\\-\\^x=~<>']_[\\-\\^x=~<>']",
                   "\\([\\-\\^x=~<>'][_.]?[\\-\\^x=~<>']\\)", "\\([\\^x=~<>']-[\\^x=~<>'`]\\)"]
    miscsymbol = ("[+%&~\\^|\\\\\\u00a6\\u00a7\\u00a8\\u00a9\\u00ac\\u00ae\\u00af\\u00b0-\\u00b3\\u00b4-\\u00ba"
                  "\\u00d7\\u00f7\\u0387\\u05be\\u05c0\\u05c3\\u05c6\\u05f3\\u05f4\\u0600-\\u0603\\u0606-\\u060a"
                  "\\u060c\\u0614\\u061b\\u061e\\u066a\\u066d\\u0703-\\u070d\\u07f6\\u07f7\\u07f8\\u0964\\u0965"
                  "\\u0e4f\\u1fbd\\u2016\\u2017\\u2020-\\u2023\\u2030-\\u2038\\u203b\\u203e-\\u2042\\u2044"
                  "\\u207a-\\u207f\\u208a-\\u208e\\u2100-\\u214f\\u2190-\\u21ff\\u2200-\\u2bff\\u3012\\u30fb"
                  "\\uff01-\\uff0f\\uff1a-\\uff20\\uff3b-\\uff40\\uff5b-\\uff65]")
    currency2 = ("[\\u00a2\\u00a3\\u00a4\\u00a5\\u0080\\u20a0\\u20ac\\u060b\\u0e3f\\u20a4"
                 "\\uffe0\\uffe1\\uffe5\\uffe6]")
    insentp = "[,;:\\u3001]"

    # (name, body, trailing context or None, action); order = priority among equally long matches.
    return [
        ("proglang", "(?i:c)\\+\\+|(?i:[cf])#", None, "plain"),
        ("assim3", "(?i:cannot|'twas)", None, "pushback3"),
        ("assim2", "(?i:'tis|gonna|gotta|lemme|gimme|wanna)", None, "pushback2"),
        ("sgml", m["SGML"], None, "sgml"),
        ("mdash", "&(?i:md|mdash|ndash);|[\\u0096\\u0097\\u2013\\u2014\\u2015]", None, "mdash"),
        ("amp", "(?i:&amp;)", None, "amp"),
        ("sppunc", "&(?i:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);", None, "plain"),
        ("word_redaux", WORD, m["REDAUX"], "word"),
        ("sword_sredaux", m["SWORD"], m["SREDAUX"], "word"),
        ("word", WORD, None, "word"),
        ("apoword", apoword, None, "plain"),
        ("apoword2", f"[yY]{APOS}", L, "plain"),
        ("fullurl", fullurl, None, "plain"),
        ("likelyurl", likelyurl, None, "plain"),
        ("email", email, None, "plain"),
        ("twitter", twitter, None, "plain"),
        ("redaux_ctx", m["REDAUX"], "[^A-Za-z]", "quote_right"),
        ("sredaux", m["SREDAUX"], None, "quote_right"),
        ("date", date, None, "plain"),
        ("number", m["NUMBER"], None, "number"),
        ("subsupnum",
         "[\\u207a\\u207b\\u208a\\u208b]?(?:[\\u2070\\u00b9\\u00b2\\u00b3\\u2074-\\u2079]+|[\\u2080-\\u2089]+)",
         None, "plain"),
        ("frac", frac, None, "frac"),
        ("frac2", "[\\u00bc\\u00bd\\u00be\\u2153-\\u215e]", None, "frac2"),
        ("tbspec", tbspec, None, "amp"),
        ("thing3", thing3, None, "plain"),
        ("dolsign", "[A-Z]*\\$|#", None, "plain"),
        ("dolsign2", currency2, None, "currency"),
        ("acronym_ctx", [f"{a}\\." for a in m["ACRO_ALTS"] + ["[A-Za-z]"]],
         f"{SPACENL}+(?:{_ACRONYM_FOLLOWERS}|{m['SGML']}){SPACENL}", "acronym"),
        ("abbrev3", abbrev3, f"{SPACENL}?{D}", "plain"),
        ("pty", "(?:(?i:pt)[eyEY]|(?i:co))\\.", f"{SPACE}(?i:ltd|lim)", "plain"),
        ("abbrev1_ctx", abbrev1, m["SENTEND"], "abbrev1"),
        ("abbrev1_any", abbrev1, "[\\s\\S][\\s\\S]", "plain"),
        ("abbrev1", abbrev1, None, "abbrev1"),
        ("abbrev2", [f"{a}\\." for a in abbrev4], None, "plain"),
        ("abbrev4", abbrev4, SPACE, "plain"),
        ("acro", ACRO, SPACENL, "plain"),
        ("tbspec2", f"{APOS}[0-9][0-9]", SPACENL, "plain"),
        ("filename", f"(?:{LX}|{D})+(?:\\.(?:{LX}|{D})+)*\\.(?i:bat|bmp|bz2|c|class|cgi|cpp|dll|doc|docx|exe"
                     "|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)",
         f"(?:{SPACENL}|[.?!,])", "plain"),
        ("word_dot", f"{WORD}\\.", insentp, "word"),
        ("phone", phone, None, "phone"),
        ("dblquot_left", dblquot, "[A-Za-z0-9$]", "quote_left"),
        ("dblquot", dblquot, None, "quote_right"),
        ("del", "\\x7f", None, "skip"),
        ("lt", "<|(?i:&lt;)", None, "lt"),
        ("gt", ">|(?i:&gt;)", None, "gt"),
        ("smiley", smiley, "[^A-Za-z0-9]", "paren"),
        ("asiansmiley", asiansmiley, None, "paren"),
        ("lcb", "\\{", None, "-LCB-"),
        ("rcb", "\\}", None, "-RCB-"),
        ("lsb", "\\[", None, "-LSB-"),
        ("rsb", "\\]", None, "-RSB-"),
        ("lrb", "\\(", None, "-LRB-"),
        ("rrb", "\\)", None, "-RRB-"),
        ("hyphens", "-+", None, "hyphens"),
        ("ldots", ldots, None, "ellipsis"),
        ("fnmarks", "@+|#+|_+", None, "plain"),
        ("asts", "\\*+|(?:\\\\\\*){1,3}", None, "plain"),
        ("insentp", insentp, None, "plain"),
        ("qe", "[?!]+", None, "plain"),
        ("period", "[.\\u00a1\\u00bf\\u037e\\u0589\\u061f\\u06d4\\u0700-\\u0702\\u07fa\\u3002]", None, "plain"),
        ("equals", "=", None, "plain"),
        ("slash", "/", None, "plain"),
        ("hthing_dot", f"{hthing}\\.", insentp, "word"),
        ("hthing", hthing, None, "word"),
        ("thing_dot", f"{thing}\\.", insentp, "plain"),
        ("thing", thing, None, "plain"),
        ("thinga_dot", f"{thinga}\\.", insentp, "amp"),
        ("thinga", thinga, None, "amp"),
        ("quote_left", "'", "[A-Za-z][^ \\t\\n\\r\\u00a0]", "quote_left"),
        ("redaux", m["REDAUX"], None, "quote_right"),
        ("quotes", quotes, None, "quote_right"),
        ("duckfeet", "<<|>>", None, "plain"),
        ("miscsymbol", miscsymbol, None, "plain"),
        ("space", f"\\x00|{SPACE}+|[\\u200b\\u200e\\u200f\\ufeff]", None, "skip"),
        ("newline", m["NEWLINE"], None, "newline"),
        ("nbsp", "(?i:&nbsp;)", None, "skip"),
    ]


# ---------------------------------------------------------------------------------------------------
# actions
# ---------------------------------------------------------------------------------------------------
_CURRENCY = [(re.compile("\u00a2"), "cents"), (re.compile("\u00a3"), "#"),
             (re.compile("[\u0080\u00a4\u20a0\u20ac]"), "$")]
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
# (the lexer matches entities in any case, but rewrites only the lower-case spellings)
_SQ_LEFT = re.compile("&apos;|'")
_DQ = re.compile("\"|&quot;")


def _latex_quotes(tok: str, left: bool) -> str:
    if left:
        tok = _SQ_LEFT.sub("`", tok)
        tok = _DQ.sub("``", tok)
    else:
        tok = _SQ_LEFT.sub("'", tok)
        tok = _DQ.sub("''", tok)
    tok = re.sub("[\u0091\u2018\u201b\u2039]", "`", tok)
    tok = re.sub("[\u0092\u2019\u203a]", "'", tok)
    tok = re.sub("[\u0093\u201c\u00ab]", "``", tok)
    tok = re.sub("[\u0094\u201d\u00bb]", "''", tok)
    return tok


def _remove_soft_hyphens(tok: str) -> str:
    out = tok.replace("\u00ad", "")
    return out if out else "-"


class _Scanner:
    def __init__(self):
        self.rules = []
        for name, body, trail, action in _rules():  # alternatives of one rule: one rule each, same action
            for alt in (body if isinstance(body, list) else [body]):
                self.rules.append((name, alt, trail, action))
        parts = []
        for i, (_, body, trail, _) in enumerate(self.rules):
            if trail is None:
                parts.append(f"(?:(?=(?P<b{i}>{body}))|)")
            else:
                parts.append(f"(?:(?=(?P<b{i}>{body})(?P<t{i}>{trail}))|)")
        self.regex = re.compile("".join(parts))
        index = self.regex.groupindex
        self.body_groups = [index[f"b{i}"] for i in range(len(self.rules))]
        # the group whose end is the end of the whole match (trailing context included)
        self.end_groups = [(i, index[f"t{i}"] if rule[2] is not None else index[f"b{i}"])
                           for i, rule in enumerate(self.rules)]
        # Fast path: a run of ASCII letters followed by a space, a line end or the end of the text is
        # always one word token (no rule can match across the space from there), except the words the
        # lexer splits (cannot, gonna, ...), which take the full scan.
        self.spaces = re.compile("[ \\t\\u00a0\\u2000-\\u200a\\u3000]+")
        self.fast = re.compile("[A-Za-z]+(?=[ \\n]|$)")
        self.fast_exclude = re.compile("(?i:cannot|gonna|gotta|lemme|gimme|wanna)$")

    def scan(self, text: str) -> list[list[str]]:
        """Tokens of `text`, one list per line (lines end at lexer newlines)."""
        lines: list[list[str]] = [[]]
        out = lines[0]
        pos, n = 0, len(text)
        regex, rules = self.regex, self.rules
        fast, fast_exclude, spaces = self.fast, self.fast_exclude, self.spaces
        while pos < n:
            ch = text[pos]
            if ch == " ":  # a run of spaces is one (skipped) match, whatever space characters follow
                pos = spaces.match(text, pos).end()
                continue
            if ch == "\n":
                out = []
                lines.append(out)
                pos += 1
                continue
            fm = fast.match(text, pos)
            if fm is not None and not fast_exclude.match(fm.group()):
                out.append(fm.group())
                pos = fm.end()
                continue
            mt = regex.match(text, pos)
            spans = mt.regs
            best_end, best_i = pos, -1
            for i, group in self.end_groups:
                end = spans[group][1]
                if end > best_end:
                    best_end, best_i = end, i
            if best_i < 0:  # untokenizable character: deleted
                pos += 1
                continue
            name, _, trail, action = rules[best_i]
            text_tok = mt.group(self.body_groups[best_i])
            consumed = len(text_tok)
            token: str | None = text_tok
            if action == "plain":
                pass
            elif action == "word":
                token = _remove_soft_hyphens(text_tok)
            elif action == "skip":
                token = None
            elif action == "newline":
                token = None
                out = []
                lines.append(out)
            elif action == "pushback3":
                consumed -= 3
                token = text_tok[:consumed]
            elif action == "pushback2":
                consumed -= 2
                token = text_tok[:consumed]
            elif action == "sgml":
                token = re.sub("[ \r\n]", "\u00a0", text_tok)
            elif action == "mdash":
                token = "--"
            elif action == "amp":
                token = re.sub("(?i:&amp;)", "&", text_tok)
            elif action == "quote_left":
                token = _latex_quotes(text_tok, True)
            elif action == "quote_right":
                token = _latex_quotes(text_tok, False)
            elif action == "number":
                token = _remove_soft_hyphens(text_tok)
            elif action == "frac":
                token = text_tok.replace(" ", "\u00a0")
            elif action == "frac2":
                token = "".join(_FRACTIONS.get(c, c) for c in text_tok)
            elif action == "currency":
                for pattern, repl in _CURRENCY:
                    token = pattern.sub(repl, token)
            elif action == "acronym":
                if consumed == 2:  # "I." and the like: the letter, then the period
                    consumed = 1
                    token = text_tok[:1]
                else:  # the acronym with its period, and the period again as a sentence end
                    consumed -= 1
            elif action == "abbrev1":
                consumed -= 1  # token keeps the period; the period is also read again
            elif action == "phone":
                token = text_tok.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-")
            elif action == "paren":
                token = text_tok.replace("(", "-LRB-").replace(")", "-RRB-")
            elif action == "lt":
                token = "<"
            elif action == "gt":
                token = ">"
            elif action == "hyphens":
                token = "--" if 3 <= len(text_tok) <= 4 else text_tok
            elif action == "ellipsis":
                token = "..."
            elif action.startswith("-"):
                token = action
            else:  # pragma: no cover - a rule with an unknown action is a programming error
                raise AssertionError(action)
            if token is not None:
                out.append(token)
            pos += max(consumed, 1)
        return lines


@lru_cache(maxsize=1)
def _scanner() -> _Scanner:
    return _Scanner()


def _prepare(text: str) -> str:
    return _LINE_BREAKS.sub(" ", text.replace("\n", " "))


def _is_cased(ch: str) -> bool:
    return ch.islower() or ch.isupper() or unicodedata.category(ch) == "Lt"


def _lower(token: str) -> str:
    """Java's String.toLowerCase: like str.lower, but a capital sigma is final when a cased letter comes
    anywhere before it in the token and none after it (Python looks only at the neighbours)."""
    if "\u03a3" not in token:
        return token.lower()
    out = []
    for i, ch in enumerate(token):
        if ch == "\u03a3":
            final = any(_is_cased(c) for c in token[:i]) and not any(_is_cased(c) for c in token[i + 1:])
            out.append("\u03c2" if final else "\u03c3")
        else:
            out.append(ch.lower())
    return "".join(out)


def _finish(tokens: Sequence[str]) -> str:
    words = [_lower(t) for t in tokens]
    return " ".join(w for w in words if w not in PUNCTUATIONS)


def ptb_tokens(text: str) -> list[str]:
    """The lower-cased PTB tokens of one caption, before coco's punctuation removal."""
    lines = _scanner().scan(_prepare(text))
    return [_lower(t) for line in lines for t in line]


def ptb_tokenize_many(texts: Iterable[str]) -> list[str]:
    """Tokenise captions as one pycocoevalcap batch: joined with newlines, tokenised, punctuation dropped.

    The captions see each other only where the lexer looks past a line end (for example "Inc." at the
    end of one caption followed by a capital letter), exactly as in the Java batch."""
    texts = [_prepare(t) for t in texts]
    if not texts:
        return []
    lines = _scanner().scan("\n".join(texts))
    if len(lines) != len(texts):  # pragma: no cover - newlines are only made by the joins
        raise AssertionError(f"tokenizer produced {len(lines)} lines for {len(texts)} captions")
    return [_finish(line) for line in lines]


def ptb_tokenize(text: str) -> str:
    """One caption as pycocoevalcap's PTBTokenizer leaves it: lower-cased tokens joined by spaces,
    coco's punctuation tokens removed. Same as a Java batch holding just this caption."""
    return ptb_tokenize_many([text])[0]


# ---------------------------------------------------------------------------------------------------
# the Java original
# ---------------------------------------------------------------------------------------------------
def _corenlp_jar() -> str:
    import pycocoevalcap.tokenizer.ptbtokenizer as ptbtokenizer

    jar = os.path.join(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    if not os.path.isfile(jar):
        raise FileNotFoundError(f"pycocoevalcap's Stanford CoreNLP jar is missing: {jar}")
    return jar


def java_available() -> bool:
    """Whether a `java` executable runs (pycocoevalcap's tokenizer and METEOR need one)."""
    java = shutil.which("java")
    if java is None:
        return False
    try:
        result = subprocess.run([java, "-version"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def java_ptb_tokenize_many(texts: Iterable[str]) -> list[str]:
    """Tokenise captions in one call of pycocoevalcap's Java PTBTokenizer (its jar, command and options,
    and its punctuation removal). Raises RuntimeError when Java is missing or the call fails."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS as COCO_PUNCTUATIONS

    texts = [_prepare(t) for t in texts]
    if not texts:
        return []
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java_ptb_tokenize_many needs Java (a `java` executable on PATH), which was not found; "
                           "use ptb_tokenize_many for the pure-Python tokenizer")
    jar = _corenlp_jar()
    with tempfile.TemporaryDirectory(prefix="ptb-") as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "wb") as handle:
            handle.write("\n".join(texts).encode())
        cmd = [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path]
        result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"Java PTBTokenizer failed ({result.returncode}): {stderr}")
    lines = result.stdout.decode().split("\n")
    if lines and lines[-1] == "" and len(lines) == len(texts) + 1:
        lines = lines[:-1]
    if len(lines) != len(texts):
        raise RuntimeError(f"Java PTBTokenizer returned {len(lines)} lines for {len(texts)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in COCO_PUNCTUATIONS) for line in lines]


if __name__ == "__main__":  # pragma: no cover - quick manual use: python -m captioner.data.ptb "text"
    for arg in sys.argv[1:]:
        print(ptb_tokenize(arg))

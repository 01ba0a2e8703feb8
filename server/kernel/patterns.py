"""Pieces of regular expressions that mean the same in Python's `re` and in ECMA-262 (the dialect of
JSON Schema's `pattern`): for rules the domain checks with a pattern the OpenAPI document states.

`\\s` is not one of them: ECMA-262's includes U+FEFF, Python's U+001C-U+001F and U+0085, and test
data generators have their own idea. Patterns name the blanks explicitly instead.
"""

# Exactly the characters `str.strip()` removes (`str.isspace()`), as the body of a character class.
BLANK = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Has a character `str.strip()` keeps: what a trimmed field that may not be blank must match.
NOT_BLANK = f"[^{BLANK}]"

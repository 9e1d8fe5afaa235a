"""Pseudonyms: HMAC-SHA256 of the value under the domain key, rendered in the domain's alphabet
and length, followed by a Luhn mod N check character (python-stdnum) that catches every
single-character typo and most adjacent transpositions."""
from __future__ import annotations

import hashlib
import hmac

from stdnum import luhn

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # no I, L, O, U: fewer reading errors


def render(digest: bytes, alphabet: str, length: int) -> str:
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(length):
        number, index = divmod(number, len(alphabet))
        chars.append(alphabet[index])
    body = "".join(chars)
    return body + luhn.calc_check_digit(body, alphabet=alphabet)


def pseudonym(key: bytes, value: str, alphabet: str = CROCKFORD, length: int = 16) -> str:
    return render(hmac.new(key, value.encode("utf-8"), hashlib.sha256).digest(), alphabet, length)


def well_formed(candidate: str, alphabet: str, length: int) -> bool:
    return (len(candidate) == length + 1 and all(c in alphabet for c in candidate)
            and luhn.is_valid(candidate, alphabet=alphabet))

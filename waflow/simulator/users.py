"""Simulated WhatsApp users: the business-scoped user id (BSUID) of each number.

Since April 2026 Meta's webhooks name a user by ``wa_id`` (the number) and ``user_id`` (a BSUID
such as ``US.13491208655302741918``: the user's country, a dot, an opaque id), reference §4.3. The
simulator gives every number one BSUID, derived from the number and the WABA id by a hash, so the
same client keeps the same id across restarts and test runs; a BSUID is scoped to a business, so
another WABA id gives another one. The country comes from the number's calling code.

``Users`` also remembers which number each derived BSUID stands for, so a status webhook for a send
to a BSUID can name the user's number too, as Meta's do for a user it knows.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

# Calling codes of the countries a demo or a test is likely to use → ISO 3166 alpha-2. Longest
# prefix wins; a number outside the table gets "ZZ" (ISO's code for an unknown country).
CALLING_CODES = {
    "1": "US", "7": "RU", "20": "EG", "27": "ZA", "31": "NL", "33": "FR", "34": "ES", "39": "IT", "44": "GB",
    "49": "DE", "51": "PE", "52": "MX", "54": "AR", "55": "BR", "56": "CL", "57": "CO", "60": "MY", "61": "AU",
    "62": "ID", "63": "PH", "65": "SG", "66": "TH", "81": "JP", "82": "KR", "84": "VN", "86": "CN", "90": "TR",
    "91": "IN", "234": "NG", "254": "KE", "351": "PT", "966": "SA", "971": "AE", "972": "IL",
}
# Numbers remembered for BSUID → number look-ups; past this, the least recently derived are forgotten.
MAX_REMEMBERED = 100_000


def country_of(wa_id: str) -> str:
    """The ISO country code of a number (digits, country code first), "ZZ" if the table lacks it."""
    for length in (3, 2, 1):
        country = CALLING_CODES.get(wa_id[:length])
        if country is not None:
            return country
    return "ZZ"


def business_scoped_id(wa_id: str, waba_id: str) -> str:
    """The stable BSUID of ``wa_id`` as the business owning ``waba_id`` sees it: ``CC.`` and 20 digits."""
    digest = hashlib.sha256(f"waflow-simulator-bsuid:{waba_id}:{wa_id}".encode()).digest()
    return f"{country_of(wa_id)}.{int.from_bytes(digest[:9], 'big') % 10**20:020d}"


class Users:
    """BSUIDs of the simulator's users, and the number behind each one derived so far."""

    def __init__(self, waba_id: str) -> None:
        self._waba_id = waba_id
        self._lock = threading.Lock()
        self._numbers: OrderedDict[str, str] = OrderedDict()  # BSUID → wa_id

    def user_id_for(self, wa_id: str) -> str:
        user_id = business_scoped_id(wa_id, self._waba_id)
        with self._lock:
            self._numbers[user_id] = wa_id
            self._numbers.move_to_end(user_id)
            if len(self._numbers) > MAX_REMEMBERED:
                self._numbers.popitem(last=False)
        return user_id

    def wa_id_for(self, user_id: str) -> str | None:
        """The number behind a BSUID the simulator derived, None for one it never made."""
        with self._lock:
            return self._numbers.get(user_id)

"""Users, HTTP sessions (JSESSIONID) with idle expiry, and alias tokens."""

from __future__ import annotations

import secrets
import string
import threading
import time
import uuid
from dataclasses import dataclass, field

TOKEN_LIFETIME_MS = 48 * 3600 * 1000
# Live sessions kept at most; beyond it expired ones are swept and then the least recently used
# are dropped (a client that sends Basic credentials without keeping the cookie makes one
# session per request, as on XNAT; this keeps the emulator's memory bounded).
MAX_SESSIONS = 200_000


class HttpSession:
    __slots__ = ("id", "user", "created", "last_access", "uses")

    def __init__(self, sid: str, user: str, created: float, last_access: float) -> None:
        self.id = sid
        self.user = user
        self.created = created
        self.last_access = last_access
        self.uses = 0


@dataclass
class AliasToken:
    alias: str
    secret: str
    user: str
    created_ms: int
    expires_ms: int
    id: int
    enabled: bool = True

    def entity(self) -> dict:
        return {"xdatUserId": self.user, "alias": self.alias, "secret": self.secret,
                "singleUse": False, "estimatedExpirationTime": self.expires_ms,
                "enabled": self.enabled, "created": self.created_ms, "id": self.id,
                "disabled": 0 if self.enabled else 1, "timestamp": self.created_ms}


@dataclass
class Auth:
    users: dict[str, str]
    admins: set[str]
    session_timeout: float = 900.0
    max_sessions_per_user: int = 0      # XNAT's security.sessions.concurrent_max; 0 = no limit
    sessions: dict[str, HttpSession] = field(default_factory=dict)
    tokens: dict[str, AliasToken] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self._token_seq = 0

    # -- credentials ---------------------------------------------------------------------
    def check_password(self, user: str, password: str) -> str | None:
        """The user a username/password (or alias/secret) pair authenticates, else None."""
        if user in self.users and secrets.compare_digest(self.users[user], password):
            return user
        with self.lock:
            tok = self.tokens.get(user)
        if tok is not None and tok.enabled and secrets.compare_digest(tok.secret, password):
            return tok.user
        return None

    # -- sessions ------------------------------------------------------------------------
    def new_session(self, user: str) -> HttpSession | None:
        """A new session for `user`, or None when the user's concurrent-session cap is hit."""
        now = time.time()
        sid = secrets.token_hex(16).upper()
        s = HttpSession(sid, user, now, now)
        with self.lock:
            cap = self.max_sessions_per_user
            if cap:
                mine = [x for x in self.sessions.values() if x.user == user]
                live = [x for x in mine if now - x.last_access <= self.session_timeout]
                if len(live) >= cap:
                    return None
            self.sessions[sid] = s
            if len(self.sessions) > MAX_SESSIONS:
                self._sweep(now)
        return s

    def _sweep(self, now: float) -> None:
        tmo = self.session_timeout
        for k in [k for k, x in self.sessions.items() if now - x.last_access > tmo]:
            del self.sessions[k]
        if len(self.sessions) > MAX_SESSIONS * 9 // 10:
            by_age = sorted(self.sessions.values(), key=lambda x: x.last_access)
            for x in by_age[:len(self.sessions) - MAX_SESSIONS * 8 // 10]:
                del self.sessions[x.id]

    def use_session(self, sid: str, max_uses: int = 0) -> HttpSession | None:
        """The live session for a cookie value (refreshing its idle timer), else None."""
        now = time.time()
        with self.lock:
            s = self.sessions.get(sid)
            if s is None:
                return None
            if now - s.last_access > self.session_timeout:
                del self.sessions[sid]
                return None
            if max_uses and s.uses >= max_uses:
                del self.sessions[sid]
                return None
            s.uses += 1
            s.last_access = now
            return s

    def drop_session(self, sid: str) -> None:
        with self.lock:
            self.sessions.pop(sid, None)

    def drop_user_sessions(self, user: str) -> list[str]:
        with self.lock:
            ids = [k for k, x in self.sessions.items() if x.user == user]
            for k in ids:
                del self.sessions[k]
        return ids

    def expire_all_sessions(self) -> None:
        with self.lock:
            self.sessions.clear()

    # -- alias tokens --------------------------------------------------------------------
    def issue_token(self, user: str) -> AliasToken:
        alphabet = string.ascii_letters + string.digits
        now_ms = int(time.time() * 1000)
        with self.lock:
            self._token_seq += 1
            tok = AliasToken(str(uuid.uuid4()), "".join(secrets.choice(alphabet) for _ in range(64)),
                             user, now_ms, now_ms + TOKEN_LIFETIME_MS, self._token_seq)
            self.tokens[tok.alias] = tok
        return tok

    def token(self, alias: str) -> AliasToken | None:
        with self.lock:
            return self.tokens.get(alias)

    def invalidate_token(self, alias: str) -> None:
        with self.lock:
            tok = self.tokens.get(alias)
            if tok is not None:
                tok.enabled = False

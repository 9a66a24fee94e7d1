"""Every auth path of the emulator: guest, closed site, Basic, JSESSION, expiry, tokens, browsers."""

from __future__ import annotations

import re
import time

import requests

ALICE = ("alice", "alice-pass")
BOB = ("bob", "bob-pass")
ADMIN = ("admin", "admin-pass")
BROWSER_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120 Safari/537.36"
LOGIN_MARK = "<!-- BEGIN xnat-templates/screens/Login.vm -->"


def jsession(emu, auth=ALICE):
    s = requests.Session()
    r = s.post(emu.url + "/data/JSESSION", auth=auth, timeout=10)
    assert r.status_code == 200, r.text
    return s, r


def test_closed_site_requires_credentials(xnat):
    r = requests.get(xnat.url + "/data/projects?format=json")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="XNAT"'
    r = requests.get(xnat.url + "/data/projects?format=json", auth=("alice", "wrong"))
    assert r.status_code == 401
    r = requests.get(xnat.url + "/data/projects?format=json", auth=("nobody", "x"))
    assert r.status_code == 401
    r = requests.post(xnat.url + "/data/JSESSION")
    assert r.status_code == 401


def test_basic_auth_and_session_cookie(xnat):
    r = requests.get(xnat.url + "/data/projects?format=json", auth=ALICE)
    assert r.status_code == 200
    assert re.fullmatch(r"[0-9A-F]{32}", r.cookies["JSESSIONID"])


def test_jsession_create_reuse_delete(xnat):
    s, r = jsession(xnat)
    sid = r.text
    assert re.fullmatch(r"[0-9A-F]{32}", sid)
    assert r.headers["Content-Type"].startswith("text/plain")
    raw = r.headers["Set-Cookie"]
    assert f"JSESSIONID={sid}; Path=/; HttpOnly" in raw
    m = re.search(r'SESSION_EXPIRATION_TIME="(\d+),(\d+)"', raw)
    assert m and m.group(2) == "900000"
    assert abs(int(m.group(1)) / 1000 - time.time()) < 60
    # reuse: the cookie alone authenticates
    plain = requests.get(xnat.url + "/data/projects?format=json",
                         cookies={"JSESSIONID": sid})
    assert plain.status_code == 200
    assert s.get(xnat.url + "/data/JSESSION").text == sid
    # delete, then the cookie is dead
    d = requests.delete(xnat.url + "/data/JSESSION", cookies={"JSESSIONID": sid})
    assert d.status_code == 200 and d.text == ""
    dead = requests.get(xnat.url + "/data/projects?format=json", cookies={"JSESSIONID": sid})
    assert dead.status_code == 401 and "WWW-Authenticate" in dead.headers
    # a dead cookie plus Basic credentials: Basic wins and a new session starts
    again = requests.get(xnat.url + "/data/projects?format=json", cookies={"JSESSIONID": sid},
                         auth=ALICE)
    assert again.status_code == 200 and again.cookies["JSESSIONID"] != sid
    # trailing slash accepted
    assert requests.delete(xnat.url + "/data/JSESSION/", auth=ALICE).status_code == 200


def test_session_idle_expiry(emulator_factory):
    emu = emulator_factory(preset="small", session_timeout=1.5)
    s, r = jsession(emu)
    assert "SESSION_EXPIRATION_TIME" in r.headers["Set-Cookie"]
    cookie = {"JSESSIONID": r.text}
    for _ in range(3):                       # use keeps it alive
        time.sleep(0.3)
        assert requests.get(emu.url + "/data/projects?format=json",
                            cookies=cookie).status_code == 200
    time.sleep(1.8)
    assert requests.get(emu.url + "/data/projects?format=json", cookies=cookie).status_code == 401


def test_expire_sessions_after_k_requests(xnat):
    xnat.faults.expire_sessions_after = 3
    _, r = jsession(xnat)
    cookie = {"JSESSIONID": r.text}
    codes = [requests.get(xnat.url + "/data/projects?format=json", cookies=cookie).status_code
             for _ in range(4)]
    assert codes == [200, 200, 200, 401]
    xnat.faults.clear()
    xnat.expire_sessions()
    assert requests.get(xnat.url + "/data/JSESSION", auth=ALICE).status_code == 200


def test_services_auth_and_data_auth(xnat):
    r = requests.put(xnat.url + "/data/services/auth",
                     data={"username": "alice", "password": "alice-pass"})
    assert r.status_code == 200 and re.fullmatch(r"[0-9A-F]{32}", r.text)
    assert r.cookies["JSESSIONID"] == r.text
    r2 = requests.post(xnat.url + "/data/services/auth",
                       data={"j_username": "bob", "j_password": "bob-pass"})
    assert r2.status_code == 200
    bad = requests.post(xnat.url + "/data/services/auth",
                        data={"username": "alice", "password": "nope"})
    assert bad.status_code == 401 and "<h3>Authentication failed.</h3>" in bad.text
    assert requests.get(xnat.url + "/data/services/auth").status_code == 405
    who = requests.get(xnat.url + "/data/auth", cookies={"JSESSIONID": r.text})
    assert who.status_code == 200 and who.text == "User 'alice' is logged in"
    nobody = requests.get(xnat.url + "/data/auth")
    assert nobody.status_code == 401 and nobody.headers["WWW-Authenticate"].startswith("Basic")


def test_open_site_guest(emulator_factory):
    emu = emulator_factory(preset="small", require_login=False)
    r = requests.get(emu.url + "/data/projects?format=json")
    assert r.status_code == 200
    assert [p["ID"] for p in r.json()["ResultSet"]["Result"]] == ["PUBLIC1", "SHARED2", "PROT1"]
    assert requests.get(emu.url + "/data/projects/PUBLIC1/subjects?format=json").status_code == 200
    prot = requests.get(emu.url + "/data/projects/PROT1/subjects?format=json")
    assert prot.status_code == 403
    assert "<h3>Unable to read subjects for Project: PROT1</h3>" in prot.text
    assert requests.get(emu.url + "/data/projects/PRIV1?format=json").status_code == 404
    anon = requests.post(emu.url + "/data/JSESSION")
    assert anon.status_code == 200 and re.fullmatch(r"[0-9A-F]{32}", anon.text)
    assert requests.get(emu.url + "/data/auth").text == "User 'guest' is logged in"
    assert requests.get(emu.url + "/data/services/tokens/issue").status_code == 403
    # wrong credentials are still refused on an open site
    assert requests.get(emu.url + "/data/projects?format=json",
                        auth=("alice", "bad")).status_code == 401
    files = requests.get(emu.url + "/data/experiments/XNAT_E00001/scans/ALL/files?format=json")
    uri = files.json()["ResultSet"]["Result"][0]["URI"]
    assert requests.get(emu.url + uri).status_code == 200
    root = requests.get(emu.url + "/")
    assert '<span style="color:red;">Guest</span>' in root.text
    # switch to closed at run time
    emu.require_login = True
    assert requests.get(emu.url + "/data/projects?format=json").status_code == 401


def test_browser_user_agents_are_redirected(xnat):
    for ua in (BROWSER_UA, "Opera/9.80", "Mozilla/4.0 (compatible; MSIE 6.0)"):
        r = requests.get(xnat.url + "/data/projects?format=json", headers={"User-Agent": ua},
                         allow_redirects=False)
        assert r.status_code == 302, ua
        assert r.headers["Location"].endswith("/app/template/Login.vm")
    followed = requests.get(xnat.url + "/data/projects?format=json",
                            headers={"User-Agent": BROWSER_UA})
    assert followed.status_code == 200 and LOGIN_MARK in followed.text
    # expired session from a browser: redirect too
    _, r = jsession(xnat)
    requests.delete(xnat.url + "/data/JSESSION", cookies={"JSESSIONID": r.text})
    r = requests.get(xnat.url + "/data/projects/PUBLIC1", cookies={"JSESSIONID": r.text},
                     headers={"User-Agent": BROWSER_UA})
    assert r.status_code == 200 and LOGIN_MARK in r.text
    # scripts get 401, never the page
    r = requests.get(xnat.url + "/data/projects", headers={"User-Agent": "curl/8.0"})
    assert r.status_code == 401


def test_private_is_404_protected_is_403(xnat):
    def st(path, auth):
        return requests.get(xnat.url + path, auth=auth).status_code
    for path in ("/data/projects/PRIV1?format=json", "/data/projects/PRIV1/subjects?format=json",
                 "/data/projects/PRIV1/experiments?format=json",
                 "/data/projects/PRIV1/accessibility",
                 "/data/experiments/XNAT_E00006?format=json",
                 "/data/experiments/XNAT_E00006/scans/ALL/files?format=json",
                 "/data/subjects/XNAT_S00005?format=json"):
        assert st(path, ALICE) == 404, path
        assert st(path, BOB) == 200, path
        assert st(path, ADMIN) == 200, path
    assert st("/data/projects/PROT1?format=json", BOB) == 200
    assert st("/data/projects/PROT1/subjects?format=json", BOB) == 403
    r = requests.get(xnat.url + "/data/projects/PROT1/experiments?format=json", auth=BOB)
    assert r.status_code == 403
    assert "<h3>Unable to read experiments for Project: PROT1</h3>" in r.text
    assert st("/data/projects/PROT1/subjects?format=json", ALICE) == 200
    assert st("/data/experiments/XNAT_E00005?format=json", BOB) == 404
    # global experiment search only shows readable experiments
    r = requests.get(xnat.url + "/data/experiments?format=json", auth=BOB)
    ids = {row["ID"] for row in r.json()["ResultSet"]["Result"]}
    assert "XNAT_E00006" in ids and "XNAT_E00005" not in ids


def test_alias_tokens(xnat):
    s = requests.Session()
    s.auth = ALICE
    r = s.get(xnat.url + "/data/services/tokens/issue")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    tok = r.json()
    assert tok["xdatUserId"] == "alice"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        tok["alias"])
    assert re.fullmatch(r"[A-Za-z0-9]{64}", tok["secret"])
    assert isinstance(tok["estimatedExpirationTime"], int)
    assert tok["estimatedExpirationTime"] - tok["created"] == 48 * 3600 * 1000
    alias, secret = tok["alias"], tok["secret"]
    used = requests.get(xnat.url + "/data/projects/PROT1/subjects?format=json",
                        auth=(alias, secret))
    assert used.status_code == 200
    assert requests.get(xnat.url + "/data/projects/PRIV1?format=json",
                        auth=(alias, secret)).status_code == 404
    v = s.get(xnat.url + f"/data/services/tokens/validate/{alias}/{secret}")
    assert v.json() == {"valid": "alice"}
    assert s.get(xnat.url + f"/data/services/tokens/validate/{alias}/wrong").json() == {}
    assert s.get(xnat.url + "/data/services/tokens/validate/nope/nope").status_code == 404
    assert requests.get(xnat.url + "/data/projects?format=json",
                        auth=(alias, "wrong")).status_code == 401
    inv = s.get(xnat.url + f"/data/services/tokens/invalidate/{alias}/{secret}")
    assert inv.status_code == 200 and inv.json() == {"result": "OK"}
    assert requests.get(xnat.url + "/data/projects?format=json",
                        auth=(alias, secret)).status_code == 401
    assert s.get(xnat.url + f"/data/services/tokens/validate/{alias}/{secret}").json() == {}
    # issuing for another user: admin only
    assert s.get(xnat.url + "/data/services/tokens/issue/user/bob").status_code == 403
    other = requests.get(xnat.url + "/data/services/tokens/issue/user/bob", auth=ADMIN)
    assert other.status_code == 200 and other.json()["xdatUserId"] == "bob"
    assert requests.get(xnat.url + "/data/services/tokens/issue").status_code == 401
    # the Python API, and a token can open a JSESSION
    a2, s2 = xnat.issue_alias_token("bob")
    r = requests.post(xnat.url + "/data/JSESSION", auth=(a2, s2))
    assert r.status_code == 200
    assert requests.get(xnat.url + "/data/projects/PRIV1?format=json",
                        cookies={"JSESSIONID": r.text}).status_code == 200
    assert requests.put(xnat.url + "/data/services/auth",
                        data={"username": a2, "password": s2}).status_code == 200


def test_no_data_leaks_to_outsiders(emulator_factory):
    emu = emulator_factory(preset="small", require_login=False)
    hidden = ["/data/experiments/XNAT_E00006?format=json", "/data/subjects/XNAT_S00005?format=json",
              "/data/projects/PRIV1/resources?format=json",
              "/data/projects/PROT1/subjects/PROT_01?format=json",
              "/data/experiments/XNAT_E00005/scans/ALL/files?format=json",
              "/data/experiments/XNAT_E00005/resources?format=json",
              "/data/projects/PROT1/experiments/PROT_01_MR1/scans?format=json",
              "/data/subjects/XNAT_S00004/experiments?format=json"]
    for auth in (None, BOB):
        for path in hidden:
            if auth == BOB and not any(k in path for k in ("PROT", "E00005", "S00004")):
                continue          # bob owns PRIV1; PROT1 (protected) stays closed to him
            r = requests.get(emu.url + path, auth=auth)
            assert r.status_code == 404, (auth, path, r.status_code)
    r = requests.get(emu.url + "/data/experiments?format=json")
    assert {row["project"] for row in r.json()["ResultSet"]["Result"]} == {"PUBLIC1", "SHARED2"}
    r = requests.get(emu.url + "/data/subjects?format=json")
    assert {row["project"] for row in r.json()["ResultSet"]["Result"]} == {"PUBLIC1", "SHARED2"}

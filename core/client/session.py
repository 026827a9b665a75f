"""The robot's HTTP sessions: the environment read once, the API key never replaced by a netrc login.

A ``requests.Session`` that trusts the environment re-reads it on every request: every proxy
variable parsed again, ``NO_PROXY`` matched again, ``~/.netrc`` searched for the host. That is
CPU on each of the ~128 chunk PUTs per GiB, and a netrc entry for the server's host turns into
a Basic ``Authorization`` header that replaces the robot's API key. A robot session takes the
proxies and the CA bundle (``REQUESTS_CA_BUNDLE`` when no bundle of its own is set) once, when it
is opened, and then stops looking.
"""

from __future__ import annotations

import requests


def robot_session(url: str, verify: bool | str = True) -> requests.Session:
    """A session for requests to ``url``'s server, with the environment's proxies and CA bundle as of now."""
    session = requests.Session()
    settings = session.merge_environment_settings(url, {}, None, verify, None)
    session.proxies, session.verify = settings["proxies"], settings["verify"]
    session.trust_env = False
    return session

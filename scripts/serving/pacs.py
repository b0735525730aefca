"""A PACS or vendor-neutral archive over DICOMweb, as the bundle's services use it: search (QIDO-RS), fetch
(WADO-RS) and store (STOW-RS), on ``dicomweb-client``.

What can go wrong is sorted into two kinds, so that a caller knows what to stop:

* :class:`ServerError`: the server cannot be used now. It does not answer (down, unreachable, slower than the
  timeout), answers 5xx or 429 after every retry, refuses the credentials (401, 403), refuses a query, or answers
  with something that is not DICOMweb. The run stops; what it finished is kept.
* :class:`InstanceError`: one instance cannot be fetched or stored (a 4xx for that instance, a response that is
  not the instance asked for, a SEG the server refuses). That instance alone fails.

Transient failures (no connection, a read timeout, 429, 500, 502, 503, 504) are retried with exponential back-off
(urllib3's ``Retry`` on the session, ``Retry-After`` honoured) before they count. Credentials come from the
environment or a file (:func:`read_credentials`), never from the command line; they are never logged, and a URL
that carries them is refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from scripts.utils.files import atomic_open

__all__ = [
    "ENV_AUTH_FILE",
    "ENV_PASSWORD",
    "ENV_TOKEN",
    "ENV_USERNAME",
    "Credentials",
    "DicomwebServer",
    "InstanceError",
    "InstanceRef",
    "ServerError",
    "read_credentials",
]

ENV_TOKEN = "DICOMWEB_TOKEN"
ENV_USERNAME = "DICOMWEB_USERNAME"
ENV_PASSWORD = "DICOMWEB_PASSWORD"
ENV_AUTH_FILE = "DICOMWEB_AUTH_FILE"
_RETRIED_STATUSES = (429, 500, 502, 503, 504)
logger = logging.getLogger(__name__)
_UIDS = {"0020000D": "StudyInstanceUID", "0020000E": "SeriesInstanceUID", "00080018": "SOPInstanceUID"}


class ServerError(RuntimeError):
    """The DICOMweb server cannot be used now; the message says what it did and what to do."""


class InstanceError(RuntimeError):
    """One instance cannot be fetched or stored; the message says why."""


@dataclass(frozen=True)
class Credentials:
    """Basic-auth user and password, or a bearer token. Shown as ``Credentials(basic|bearer)``, never in clear."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Credentials({'bearer' if self.token else 'basic'})"

    def apply(self, session: requests.Session) -> None:
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        else:
            session.auth = (self.username or "", self.password or "")


def read_credentials(environ: Mapping[str, str] | None = None, auth_file: str | os.PathLike | None = None) -> Credentials | None:
    """The credentials to use, or None for an open server.

    ``auth_file`` (else ``$DICOMWEB_AUTH_FILE``) is a JSON file ``{"token": "..."}`` or ``{"username": "...",
    "password": "..."}``; without one, ``$DICOMWEB_TOKEN``, or ``$DICOMWEB_USERNAME`` with ``$DICOMWEB_PASSWORD``.

    Raises:
        ValueError: the file cannot be read or holds neither form, or a user comes without a password (or the
            reverse). The message names the file or variable, never a secret.
    """
    environ = os.environ if environ is None else environ
    auth_file = auth_file or environ.get(ENV_AUTH_FILE) or None
    if auth_file:
        path = Path(auth_file)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read the DICOMweb credentials: {type(error).__name__}") from None
        if not isinstance(content, dict):
            content = {}
        credentials = _credentials(content.get("username"), content.get("password"), content.get("token"), str(path))
        if credentials is None:
            raise ValueError(f"{path}: holds neither a token nor a username and password")
        return credentials
    return _credentials(environ.get(ENV_USERNAME), environ.get(ENV_PASSWORD), environ.get(ENV_TOKEN),
                        f"${ENV_USERNAME} / ${ENV_PASSWORD}")  # fmt: skip


def _credentials(username, password, token, source: str) -> Credentials | None:
    if token:
        if not isinstance(token, str):
            raise ValueError(f"{source}: the token must be text")
        return Credentials(token=token)
    if not username and not password:
        return None
    if not (isinstance(username, str) and username and isinstance(password, str) and password):
        raise ValueError(f"{source}: a username needs a password and a password a username")
    return Credentials(username=username, password=password)


@dataclass(frozen=True)
class InstanceRef:
    """An instance found by a search: its three UIDs and the attributes the search returned (a pydicom Dataset)."""

    study: str
    series: str
    sop: str
    attributes: pydicom.Dataset = field(compare=False, repr=False)


class DicomwebServer:
    """A DICOMweb service at ``url`` (its root: ``.../dicom-web``).

    Args:
        url: the service root, ``http`` or ``https``, without credentials in it.
        credentials: from :func:`read_credentials`; None for an open server.
        retries: how many times a transient failure is retried before it counts.
        backoff: the wait before the second retry, in seconds (the first is at once); it doubles with each retry.
        timeout: seconds to wait for a connection and for each answer.
    """

    def __init__(self, url: str, credentials: Credentials | None = None, retries: int = 4, backoff: float = 1.0,
                 timeout: float = 60.0) -> None:  # fmt: skip
        from dicomweb_client.api import DICOMwebClient

        parts = urlsplit(url)
        if "@" in parts.netloc or parts.username or parts.password:
            raise ValueError(f"--url: credentials do not go in the URL; set ${ENV_USERNAME} and ${ENV_PASSWORD}, "
                             f"${ENV_TOKEN}, or an --auth_file")  # fmt: skip
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url {url!r}: not an http(s) URL of a DICOMweb service")
        if parts.query:
            raise ValueError("--url: a query string does not go in the URL (a token goes in $DICOMWEB_TOKEN)")
        self.url = url.rstrip("/")
        self.tries = retries + 1
        session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0, backoff_factor=backoff / 2,
                      status_forcelist=_RETRIED_STATUSES, allowed_methods=None, raise_on_status=False,
                      respect_retry_after_header=True, retry_after_max=max(60.0, 8 * backoff))  # fmt: skip
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        if credentials is not None:
            credentials.apply(session)
        self.client = DICOMwebClient(self.url, session=session, timeout=timeout)
        self.client.set_http_retry_params(retry=False)  # the session retries, connection errors included

    # -- search ---------------------------------------------------------------------------------------------------

    def instances(self, filters: Mapping[str, str], fields: Sequence[str] = (), page_size: int = 500) -> Iterator[InstanceRef]:
        """Every instance matching ``filters`` (QIDO-RS attribute matching), ``page_size`` asked for per request.

        Pages are asked for until one is empty or brings nothing new: a server may return fewer than asked (a cap of
        its own) with more to come, or ignore ``limit`` and ``offset`` and return everything each time. A result
        that is not a DICOM JSON data set with the three UIDs is logged and left out; nothing can be recorded of it.

        Raises:
            ServerError: the search fails, or an answer is not a list.
        """
        offset, seen = 0, set()
        what = f"search for instances ({', '.join(f'{key}={value}' for key, value in filters.items()) or 'all'})"
        while True:
            found = self._call(what, None, self.client.search_for_instances, search_filters=dict(filters),
                               fields=list(fields) or None, limit=page_size, offset=offset)  # fmt: skip
            if not isinstance(found, list):
                raise ServerError(f"{self.url}: {what}: the answer is not a list of DICOM JSON data sets")
            new = 0
            for item in found:
                ref = self._reference(item, what)
                if ref is not None and ref.sop not in seen:
                    seen.add(ref.sop)
                    new += 1
                    yield ref
            if not found or not new:
                return
            offset += len(found)

    def _reference(self, item: object, what: str) -> InstanceRef | None:
        try:
            attributes = pydicom.Dataset.from_json(item)
            uids = [str(attributes[keyword].value) for keyword in _UIDS.values()]
        except Exception as error:
            logger.warning("%s: %s: a result left out: not a DICOM JSON data set with %s (%s)", self.url, what,
                           ", ".join(_UIDS.values()), type(error).__name__)  # fmt: skip
            return None
        return InstanceRef(*uids, attributes=attributes)

    # -- fetch and store ------------------------------------------------------------------------------------------

    def fetch(self, ref: InstanceRef, path: str | os.PathLike) -> Path:
        """Fetch ``ref`` (WADO-RS, as stored) into the DICOM file ``path``, written atomically."""
        what = f"fetch instance {ref.sop}"
        dataset = self._call(what, ref, self.client.retrieve_instance, ref.study, ref.series, ref.sop)
        if not isinstance(dataset, pydicom.Dataset) or str(dataset.get("SOPInstanceUID", "")) != ref.sop:
            raise InstanceError(f"{what}: the server sent something other than that instance")
        try:
            with atomic_open(path, "wb") as handle:
                pydicom.dcmwrite(handle, dataset, enforce_file_format=True)
        except (ValueError, TypeError, AttributeError, KeyError) as error:  # not a complete DICOM file
            raise InstanceError(f"{what}: the server's copy cannot be written as a DICOM file ({error})") from None
        return Path(path)

    def store(self, path: str | os.PathLike, study: str) -> str:
        """Store the DICOM file ``path`` in ``study`` (STOW-RS); returns its SOPInstanceUID.

        The store counts when the answer lists the instance as stored, or, where it does not (an answer without the
        list, a 409 Conflict, a "duplicate" failure: a retried request whose first try did store it), when a search
        finds the instance in the study. So storing the same file again never stores a second SEG.
        """
        what = f"store {Path(path).name} in study {study}"
        try:
            dataset = pydicom.dcmread(path)
            uid = str(dataset.SOPInstanceUID)
        except Exception as error:
            raise InstanceError(f"{what}: cannot read it ({type(error).__name__}: {error})") from None
        try:
            answer = self._call(what, uid, self.client.store_instances, [dataset], study_instance_uid=study)
        except InstanceError:
            if self._holds(study, uid):
                return uid
            raise
        stored = [item for item in getattr(answer, "ReferencedSOPSequence", []) or []
                  if str(item.get("ReferencedSOPInstanceUID", "")) == uid]  # fmt: skip
        if stored or self._holds(study, uid):
            return uid
        failed = [item for item in getattr(answer, "FailedSOPSequence", []) or []
                  if str(item.get("ReferencedSOPInstanceUID", "")) == uid]  # fmt: skip
        reason = failed[0].get("FailureReason", "no reason given") if failed else "the answer does not list it as stored"
        raise InstanceError(f"{what}: the server refused it (failure reason {reason})")

    def _holds(self, study: str, uid: str) -> bool:
        """Whether a search finds the instance ``uid`` in ``study``."""
        found = self._call(f"search for instance {uid}", None, self.client.search_for_instances,
                           study_instance_uid=study, search_filters={"SOPInstanceUID": uid})  # fmt: skip
        return any(str(item.get("00080018", {}).get("Value", [""])[0]) == uid for item in found or [])

    # -- errors ---------------------------------------------------------------------------------------------------

    def _call(self, what: str, instance: object, function, *args, **kwargs):
        """``function(*args, **kwargs)`` with its failures as :class:`ServerError` or, for ``instance``,
        :class:`InstanceError`."""
        try:
            return function(*args, **kwargs)
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            reason = f"HTTP {status} {getattr(error.response, 'reason', '') or ''}".strip()
            if status in (401, 403):
                raise ServerError(f"{self.url}: {what}: {reason}: the server refused the credentials (set "
                                  f"${ENV_USERNAME} and ${ENV_PASSWORD}, ${ENV_TOKEN} or --auth_file)") from None  # fmt: skip
            if status in _RETRIED_STATUSES or status >= 500:
                raise ServerError(self._unavailable(what, reason)) from None
            if instance is None:  # a search the server refuses: not retried, and nothing else would work either
                raise ServerError(f"{self.url}: {what}: {reason}") from None
            raise InstanceError(f"{what}: {reason}") from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise ServerError(self._unavailable(what, _cause(error))) from None
        except (requests.exceptions.InvalidJSONError, ValueError, KeyError, IndexError, TypeError,
                AttributeError) as error:  # fmt: skip
            # dicomweb-client's parsing of a body that is not JSON / multipart DICOM
            message = f"{what}: the answer is not valid DICOMweb ({type(error).__name__})"
            if instance is None:
                raise ServerError(f"{self.url}: {message}") from None
            raise InstanceError(message) from None
        except requests.RequestException as error:
            raise ServerError(self._unavailable(what, _cause(error))) from None
        except Exception as error:  # pydicom's InvalidDicomError on a part that is not a DICOM file, and the like
            message = f"{what}: the answer cannot be read ({type(error).__name__}: {error})"
            if instance is None:
                raise ServerError(f"{self.url}: {message}") from None
            raise InstanceError(message) from None

    def _unavailable(self, what: str, reason: str) -> str:
        return f"{self.url}: {what}: {reason} after {self.tries} {'try' if self.tries == 1 else 'tries'}"


def _cause(error: Exception) -> str:
    """The innermost cause of a requests error, shortly: ``connection refused``, ``read timed out``..."""
    text = str(error)
    for marker, shown in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                          ("Name or service not known", "unknown host"), ("RemoteDisconnected", "connection closed"),
                          ("Connection reset", "connection reset"), ("Max retries exceeded", "no answer")):  # fmt: skip
        if marker in text:
            return f"no answer ({shown})"
    return f"no answer ({type(error).__name__})"

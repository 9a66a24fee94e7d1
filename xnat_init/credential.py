"""datalad xnat-credential: enter, check and store the XNAT login of a dataset's instance.

What a colleague runs in a clone (where xnat-init has nothing to do), and anyone whose password
changed: it reads the instance's server and credential name from `.datalad/config`, asks in the
terminal, logs in to check, and stores the credential in the keyring under that name, where the
special remote and xnat-update find it. With --token it stores an alias token instead, so the
password itself is kept nowhere.
"""

from __future__ import annotations

import logging
import time

from datalad.distribution.dataset import datasetmethod, require_dataset
from datalad.interface.base import Interface, build_doc, eval_results
from datalad.interface.results import get_status_dict
from datalad.support.constraints import EnsureNone, EnsureStr
from datalad.support.param import Parameter

from git_annex_remote_xnat.credentials import ANONYMOUS, Credential, keep_typed_credential

from .common import dataset_param, is_terminal, log_in
from .config import CONFIG_FILE, DEFAULT_NAME, read_config

lgr = logging.getLogger("datalad.xnat.credential")
ACTION = "xnat_credential"


@build_doc
class XnatCredential(Interface):
    """Enter the XNAT login of this dataset's server and store it in the keyring.

    Asks for the user name and password in the terminal, checks them against the server the
    dataset tracks, and stores them as the dataset's credential (``datalad-<name>`` in the
    keyring), where ``datalad get``, ``git annex get`` and ``datalad xnat-update`` find it. Run
    it in a fresh clone, or again when the password changed. With ``--token`` an XNAT alias
    token is requested with the password and stored instead: it logs in until the server lets
    it expire (then run this again), and the password is stored nowhere.
    """

    _params_ = dict(
        dataset=dataset_param("store the credential for"),
        name=Parameter(
            args=("--name",), metavar="NAME",
            doc="the XNAT instance of the dataset (as given to xnat-init --name)",
            constraints=EnsureStr() | EnsureNone()),
        token=Parameter(
            args=("--token",), action="store_true",
            doc="store an alias token issued by the server instead of the password"),
    )

    _examples_ = [
        dict(text="In a clone: enter your XNAT login once",
             code_cmd="datalad xnat-credential"),
        dict(text="Store an alias token rather than the password",
             code_cmd="datalad xnat-credential --token"),
    ]

    @staticmethod
    @datasetmethod(name="xnat_credential")
    @eval_results
    def __call__(*, dataset=None, name=None, token=False):
        ds = require_dataset(dataset, check_installed=True, purpose="store an XNAT credential")
        name = name or DEFAULT_NAME

        def result(status, message, **kwargs):
            return get_status_dict(action=ACTION, ds=ds, status=status, message=message,
                                   logger=lgr, **kwargs)

        config = read_config(ds.pathobj, name)
        if config is None:
            yield result("impossible", f"this dataset tracks no XNAT instance '{name}' (no "
                         f"datalad.xnat.{name}.url in {CONFIG_FILE}); set one up with "
                         "`datalad xnat-init URL -p PROJECT`")
            return
        if config.credential == ANONYMOUS:
            yield result("notneeded", f"instance '{name}' reads {config.url} anonymously: no "
                         "credential to store")
            return
        if not is_terminal():
            yield result("impossible", "xnat-credential asks for the user name and password, "
                         "and there is no terminal to ask in; run it in a terminal")
            return
        # always asked: this command is how a changed password is entered
        logged_in = log_in(config.credential, config.url, ds.path, may_prompt=True,
                           force_ask=True)
        if logged_in.client is None:
            yield result("error", logged_in.message)
            return
        credential = logged_in.credential
        assert credential is not None
        what = f"user '{credential.user}'"
        with logged_in.client as client:
            if token:
                from git_annex_remote_xnat.client import XnatError

                try:
                    issued = client.issue_token()
                except XnatError as exc:
                    yield result("error", f"{config.url} issued no alias token ({exc}); run "
                                 "`datalad xnat-credential` without --token to store the "
                                 "password instead")
                    return
                credential = Credential(credential.name, issued.alias, issued.secret, "token")
        warning = keep_typed_credential(credential, config.url)
        if warning:
            yield result("error", warning)
            return
        if token:
            until = (time.strftime(" until %Y-%m-%d %H:%M", time.localtime(issued.expires))
                     if issued.expires else "")
            what = (f"an alias token of {what}, valid{until} (then run `datalad "
                    "xnat-credential --token` again); the password is stored nowhere")
        yield result("ok", f"credential '{credential.name}' for {config.url} stored in the "
                     f"keyring: {what}", credential_name=credential.name)

"""The ``guest-self-hosted`` executor: a helper installed in the guest runs the whole build.

Two halves, one distribution:

* in the guest, the helper ``fruix-self-hosted-native-build``
  (:mod:`fruix_guest_self_hosted.helper`) checks the development overlay,
  recovers the FreeBSD source store from the system's ``store-layout.scm``
  and runs the five phases with the ``local`` executor's hooks
  (:mod:`fruix_guest_self_hosted.guestbuild`);
* on the host, :class:`GuestSelfHostedExecutor`
  (:mod:`fruix_guest_self_hosted.executor`) checks the helper's presence and
  version over SSH, invokes it once, follows its progress, and imports its
  result root for the core to promote.

They talk through the line protocol of :mod:`fruix_guest_self_hosted.protocol`.
"""

from __future__ import annotations

from fruix_guest_self_hosted.__about__ import __version__
from fruix_guest_self_hosted.executor import NAME, SCHEMA, GuestSelfHostedExecutor

__all__ = ["NAME", "SCHEMA", "GuestSelfHostedExecutor", "__version__"]

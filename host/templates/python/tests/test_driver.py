"""The verbs, unit-tested with plain CPython against a fake host (testing/fake_host.py):
`python3 -m unittest` in the project directory. No componentize-py, no wasm, no root."""

import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, d) for d in ("src", "vendor", "testing")]

import fake_host  # noqa: E402

fake_host.install()

import driver  # noqa: E402
from flex_driver import DriverError, Options  # noqa: E402

DIR = "/var/lib/kubelet/pods/u1/volumes/{{name}}/scratch"


class {{class}}Test(unittest.TestCase):
    def setUp(self) -> None:
        self.host = fake_host.reset()
        self.driver = driver.{{class}}()

    def mounts(self):
        return [request for operation, request in self.host.calls if operation == "mount"]

    def test_init_reports_a_driver_that_is_not_attachable(self) -> None:
        caps = self.driver.init()
        self.assertFalse(caps.attach)
        self.assertFalse(caps.fs_group)

    def test_mount_defaults_to_64_mebibytes_writable_by_all(self) -> None:
        self.driver.mount(DIR, Options())
        self.assertEqual(self.host.calls[0], ("is_mountpoint", DIR))
        (request,) = self.mounts()
        self.assertEqual((request.source, request.target, request.fs_type, request.bind),
                         ("tmpfs", DIR, "tmpfs", False))
        self.assertEqual(request.options, ["nosuid", "nodev", "size=67108864", "mode=0777"])

    def test_mount_applies_size_read_only_and_fs_group(self) -> None:
        self.driver.mount(DIR, Options(read_only=True, fs_group=2000, extra={"size": "8Mi"}))
        (request,) = self.mounts()
        self.assertEqual(request.options,
                         ["nosuid", "nodev", "size=8388608", "ro", "gid=2000", "mode=2775"])

    def test_a_bad_size_fails_before_any_host_call(self) -> None:
        for size in ["0", "2Ti", "lots"]:
            with self.assertRaises(DriverError, msg=size):
                self.driver.mount(DIR, Options(extra={"size": size}))
        self.assertEqual(self.host.calls, [])

    def test_mount_is_idempotent(self) -> None:
        self.driver.mount(DIR, Options())
        self.host.calls.clear()
        self.driver.mount(DIR, Options())  # the retry only looks
        self.assertEqual(self.host.calls, [("is_mountpoint", DIR)])

    def test_a_host_refusal_reaches_kubelet(self) -> None:
        self.host.fail_next["mount"] = "denied: option size=67108864 is not granted"
        with self.assertRaisesRegex(DriverError, "^denied: option size=67108864 is not granted$"):
            self.driver.mount(DIR, Options())
        self.assertEqual(self.host.mounted, {})

    def test_unmount_undoes_mount_and_accepts_a_directory_not_mounted(self) -> None:
        self.driver.mount(DIR, Options())
        self.driver.unmount(DIR)
        self.assertEqual(self.host.mounted, {})
        self.host.calls.clear()
        self.driver.unmount(DIR)
        self.assertEqual(self.host.calls, [("is_mountpoint", DIR)])


if __name__ == "__main__":
    unittest.main()

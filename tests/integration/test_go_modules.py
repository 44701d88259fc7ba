"""`kiln register --go-module` and `--go-modules-from`: one runner per Go module, named
runner-<project>-<module> and tagged go-module,<module>, against the GitLab emulator; with a
registration token the tags reach GitLab, with an authentication token (glrt-) kiln prints the
tags to set in GitLab and records them in the config; `kiln list` shows them."""

from __future__ import annotations

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from test_cli import KilnTestCase, load_toml, runner_names  # noqa: E402


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class GoModuleRegisterTest(KilnTestCase):
    emulator_args = {"tls": True}

    def make_repo(self) -> str:
        """A monorepo "shop" with four modules, a vendored and a testdata go.mod, a hidden dir."""
        repo = os.path.join(self.tmp, "src", "shop")
        os.makedirs(os.path.join(repo, ".git"))
        write(os.path.join(repo, "go.mod"), "// The shop.\nmodule example.com/shop\n\ngo 1.22\n")
        write(os.path.join(repo, "billing", "go.mod"),
              'module "example.com/shop/billing/v2" // v2 of billing\n\nrequire (\n'
              "\texample.com/dep v1.0.0\n)\n")
        write(os.path.join(repo, "tools", "a", "go.mod"),
              "module (\n\texample.com/shop/a/cmd/tools\n)\n")
        write(os.path.join(repo, "tools", "b", "go.mod"), "module example.com/shop/b/cmd/tools\n")
        write(os.path.join(repo, "vendor", "x", "go.mod"), "module example.com/vendored\n")
        write(os.path.join(repo, "billing", "testdata", "go.mod"), "module example.com/fixture\n")
        write(os.path.join(repo, ".cache", "go.mod"), "module example.com/hidden\n")
        return repo

    def module_args(self, *flags: str, reg_token: str | None = None, token: str | None = None):
        args = ["register", "--non-interactive", "--url", self.gl.url, "--executor", "shell",
                "--config", self.config, "--tls-ca-file", self.gl.ca_file, *flags]
        if reg_token:
            args += ["--registration-token", reg_token]
        if token:
            args += ["--token", token]
        return args

    def test_modules_from_a_tree_with_a_registration_token(self):
        repo = self.make_repo()
        reg = self.new_registration_token()
        self.assert_ok(self.kiln(*self.module_args("--go-modules-from", repo, reg_token=reg)))
        expected = {
            "runner-shop-shop": ["go-module", "shop"],
            "runner-shop-billing": ["go-module", "billing"],
            "runner-shop-a-cmd-tools": ["go-module", "a-cmd-tools"],
            "runner-shop-b-cmd-tools": ["go-module", "b-cmd-tools"],
        }
        config = load_toml(self.config)
        self.assertEqual({r["name"]: r["tags"] for r in config["runners"]}, expected)
        in_gitlab = {r["description"]: sorted(r["tags"]) for r in self.gl.runners()
                     if r.get("description") in expected}
        self.assertEqual(in_gitlab, {k: sorted(v) for k, v in expected.items()})
        listed = self.kiln("list", "--config", self.config)
        self.assert_ok(listed)
        out = listed.stdout + listed.stderr
        self.assertIn("runner-shop-billing", out)
        self.assertIn("Tags=go-module,billing", out)

        # Again after adding a module: only the new one is registered.
        write(os.path.join(repo, "web", "go.mod"), "module example.com/shop/web\n")
        self.assert_ok(self.kiln(*self.module_args("--go-modules-from", repo, reg_token=reg)))
        names = runner_names(self.config)
        self.assertEqual(len(names), 5, names)
        self.assertEqual(len(set(names)), 5, names)
        self.assertIn("runner-shop-web", names)

    def test_one_module_with_an_authentication_token_prints_the_tags(self):
        repo = self.make_repo()
        runner = self.gl.create_runner(kind="glrt", tags=[])
        proc = self.kiln(*self.module_args("--go-module", os.path.join(repo, "billing"),
                                           token=runner["token"]))
        self.assert_ok(proc)
        self.assertIn("go-module,billing", proc.stdout)
        self.assertIn("Set these tags on the runner in GitLab", proc.stdout)
        [entry] = load_toml(self.config)["runners"]
        self.assertEqual(entry["name"], "runner-shop-billing")
        self.assertEqual(entry["tags"], ["go-module", "billing"])
        # GitLab's tags are GitLab's: kiln did not (and cannot) change them.
        self.assertEqual(self.runner_by_id(entry["id"])["tags"], [])

    def test_project_flag_and_go_mod_file(self):
        repo = self.make_repo()
        reg = self.new_registration_token()
        self.assert_ok(self.kiln(*self.module_args(
            "--go-module", os.path.join(repo, "billing", "go.mod"), "--project", "payments",
            reg_token=reg)))
        self.assertEqual(runner_names(self.config), ["runner-payments-billing"])

    def test_a_glrt_token_cannot_serve_many_modules(self):
        repo = self.make_repo()
        runner = self.gl.create_runner(kind="glrt")
        line = self.assert_one_error(self.kiln(*self.module_args(
            "--go-modules-from", repo, token=runner["token"])))
        self.assertIn("found 4 Go modules", line)
        self.assertFalse(os.path.exists(self.config))

    def test_a_broken_go_mod_registers_nothing(self):
        repo = self.make_repo()
        write(os.path.join(repo, "broken", "go.mod"), "go 1.22\nmodule \"example.com/x\n")
        reg = self.new_registration_token()
        before = len(self.gl.runners())
        proc = self.kiln(*self.module_args("--go-modules-from", repo, reg_token=reg))
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn(os.path.join(repo, "broken", "go.mod") + ":2: newline in string",
                      proc.stderr)
        self.assertEqual(len(self.gl.runners()), before)
        self.assertFalse(os.path.exists(self.config))

    def test_missing_go_mod_is_a_clear_error(self):
        line = self.assert_one_error(self.kiln(*self.module_args(
            "--go-module", self.tmp, reg_token="x")))
        self.assertIn("no go.mod there", line)


if __name__ == "__main__":
    unittest.main()

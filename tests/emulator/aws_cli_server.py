"""The AWS CLI, kept running: the tests' own reads and changes of the emulator.

The same CLI as `aws` (awscli's driver, from the emulator's venv), but one process
answers many commands: a fresh `aws` process spends about a second of CPU importing
botocore and loading the service models before its request, and the tests make
thousands of calls on a 2-core machine. Arguments, output and exit codes are the
CLI's own.

Protocol: one JSON object a line on stdin, `{"args": [...], "key": [id, secret]}`;
one a line on stdout, `{"rc": N, "stdout": "...", "stderr": "..."}`. The process ends
when stdin closes (the test process that started it ended).
"""

import contextlib
import io
import json
import os
import sys

from awscli.clidriver import create_clidriver


def main():
    answer = sys.stdout
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        os.environ.pop(var, None)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    # A fresh driver (a botocore session) for each command, as a fresh `aws` process
    # has: the CLI's customizations register handlers on the session as commands run,
    # and one command's handlers break the next. What costs is loading the service
    # models, and their loader is shared.
    loader = None
    for line in sys.stdin:
        req = json.loads(line)
        key_id, secret = req["key"]
        # The key, as the environment gives it to a fresh `aws`.
        os.environ["AWS_ACCESS_KEY_ID"] = key_id
        os.environ["AWS_SECRET_ACCESS_KEY"] = secret
        driver = create_clidriver()
        if loader is None:
            loader = driver.session.get_component("data_loader")
        else:
            driver.session.register_component("data_loader", loader)
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = driver.main(req["args"])
            except SystemExit as e:  # argparse's usage errors
                rc = e.code if isinstance(e.code, int) else 255
            except Exception as e:  # what `aws` would print and exit 255 on
                print(f"{type(e).__name__}: {e}", file=sys.stderr)
                rc = 255
        texts = []
        for stream in (out, err):
            stream.flush()
            texts.append(stream.buffer.getvalue().decode("utf-8", "replace"))
        answer.write(json.dumps({"rc": rc, "stdout": texts[0], "stderr": texts[1]}) + "\n")
        answer.flush()


if __name__ == "__main__":
    main()

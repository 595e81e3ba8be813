"""Send tasks from the web process without blocking its IOLoop."""

import asyncio
import functools
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from stackdemo.apps import create_producer_app
from stackdemo.config import Config
from stackdemo.web.validation import Submission


@dataclass(frozen=True)
class Submitted:
    task_id: str
    link_task_id: str | None = None


class Submitter:
    def __init__(self, config: Config, max_workers: int = 4) -> None:
        self.app = create_producer_app(config)
        # kombu's Redis publish is blocking I/O; threads keep it off the loop.
        self._executor = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="stackdemo-submit"
        )

    async def submit(self, submission: Submission) -> Submitted:
        task_id = str(uuid.uuid4())
        options: dict[str, Any] = {}
        for key in ("countdown", "eta", "expires", "queue", "priority"):
            value = getattr(submission, key)
            if value is not None:
                options[key] = value
        link_task_id = None
        if submission.link is not None:
            # A fixed id lets the client poll the callback like any task.
            link_task_id = str(uuid.uuid4())
            options["link"] = self.app.signature(
                submission.link.name,
                args=submission.link.args,
                kwargs=submission.link.kwargs,
                task_id=link_task_id,
            )
        send = functools.partial(
            self.app.send_task,
            submission.name,
            args=submission.args,
            kwargs=submission.kwargs,
            task_id=task_id,
            # Publishing to a queue is a plain LPUSH; declaring it first would
            # also need LLEN, SADD, MULTI and EXEC in the web's Redis ACL.
            declare=[],
            **options,
        )
        await asyncio.get_running_loop().run_in_executor(self._executor, send)
        return Submitted(task_id=task_id, link_task_id=link_task_id)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
        self.app.close()

"""The seed article's front, as the benchmarks' baseline: one blocking .get() per request.

A synchronous Tornado handler submits add(x, y) and waits for its result in the event loop's
own thread, so the process serves one request at a time. Run on a lab host with the app's
virtualenv: seed_baseline.py PORT (binds 127.0.0.1).
"""

import sys

import tornado.ioloop
import tornado.web
from stackdemo.apps import create_producer_app
from stackdemo.config import load_config

config = load_config("/etc/stackdemo/web.json")
app = create_producer_app(config)
app.conf.result_backend = config.result_backend
add = app.signature("stackdemo.tasks.add")


class AddHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        x = float(self.get_query_argument("x"))
        y = float(self.get_query_argument("y"))
        # declare=[]: publish as the front does (the web user may not declare queues).
        self.write({"result": add.apply_async((x, y), declare=[]).get(timeout=30)})


if __name__ == "__main__":
    tornado.web.Application([(r"/add", AddHandler)]).listen(int(sys.argv[1]), "127.0.0.1")
    tornado.ioloop.IOLoop.current().start()

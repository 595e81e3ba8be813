"""Ansible's linear strategy, run through Mitogen when it is installed.

Under ansible-core 2.19 each module run starts a Python on the host that imports Ansible's
module_utils from a zip, compiled from source every time (about 0.4 s on a small host): most of
a no-change converge. Mitogen keeps one interpreter per host and its imports warm. Without the
mitogen package this is the plain linear strategy, so nothing breaks where it is absent; set
ANSIBLE_STRATEGY=linear to opt out explicitly.
"""

try:
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except ImportError:
    from ansible.plugins.strategy.linear import StrategyModule
else:

    class StrategyModule(
        ansible_mitogen.strategy.StrategyMixin,
        ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True),
    ):
        pass

"""Kept so that installs made before the diagnostics moved still load the plugin.

Their `vllm.general_plugins` entry point names ``vllm_epdp.plugin:register``
until vllm-epdp is reinstalled; new installs name the real module.
"""

from vllm_epdp.diagnostics.plugin import register

__all__ = ["register"]

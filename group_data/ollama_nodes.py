# Nothing to set here: Ollama nodes are data of the gateways (`ollama_nodes` in litellm_hosts.py),
# not hosts, and need no SSH. This file only refuses an inventory that still lists an `ollama_nodes`
# group (the old format), with the data to paste instead. pyinfra runs group data files while it
# loads the inventory, so the refusal comes before it connects to any host.
from pyinfra import inventory

from tasks.config.settings import OLLAMA_NODES, HostInput, refuse_node_group

refuse_node_group([HostInput(h.name, h.data.get) for h in inventory.get_group(OLLAMA_NODES, default=[])])

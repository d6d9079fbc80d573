"""CoLLM training side: CoLLM-CC / CoLLM-DC / Monte Carlo updates on LoRA actors from traces."""

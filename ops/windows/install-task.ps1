# llama-sidecar as a scheduled task at logon, where NSSM is not installed
# Rendered by `python -m orchestrator.service.templates`; `orchestrator service install` does
# the same on this machine. Adapt the paths, then run this in PowerShell (as an administrator
# for a service).
& 'schtasks' '/Create' '/TN' 'llama-sidecar' '/TR' 'C:\llama-sidecar\.venv\Scripts\python.exe -m orchestrator serve --config C:\llama-sidecar\config.toml --log-file C:\Users\you\AppData\Local\llama-sidecar\logs\llama-sidecar.log' '/SC' 'ONLOGON' '/RL' 'LIMITED' '/F'
& 'schtasks' '/Run' '/TN' 'llama-sidecar'

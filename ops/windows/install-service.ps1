# llama-sidecar as a Windows service, through NSSM (https://nssm.cc, on PATH)
# Rendered by `python -m orchestrator.service.templates`; `orchestrator service install` does
# the same on this machine. Adapt the paths, then run this in PowerShell (as an administrator
# for a service).
& 'nssm' 'install' 'llama-sidecar' 'C:\llama-sidecar\.venv\Scripts\python.exe'
& 'nssm' 'set' 'llama-sidecar' 'AppParameters' '-m orchestrator serve --config C:\llama-sidecar\config.toml'
& 'nssm' 'set' 'llama-sidecar' 'DisplayName' 'llama-sidecar'
& 'nssm' 'set' 'llama-sidecar' 'Description' 'llama.cpp servers behind one OpenAI-compatible endpoint'
& 'nssm' 'set' 'llama-sidecar' 'Start' 'SERVICE_AUTO_START'
& 'nssm' 'set' 'llama-sidecar' 'AppStdout' 'C:\ProgramData\llama-sidecar\logs\llama-sidecar.log'
& 'nssm' 'set' 'llama-sidecar' 'AppStderr' 'C:\ProgramData\llama-sidecar\logs\llama-sidecar.log'
& 'nssm' 'set' 'llama-sidecar' 'AppRotateFiles' '1'
& 'nssm' 'set' 'llama-sidecar' 'AppRotateOnline' '1'
& 'nssm' 'set' 'llama-sidecar' 'AppRotateBytes' '10485760'
& 'nssm' 'set' 'llama-sidecar' 'AppStopMethodConsole' '30000'
& 'nssm' 'set' 'llama-sidecar' 'AppExit' 'Default Restart'
& 'nssm' 'start' 'llama-sidecar'

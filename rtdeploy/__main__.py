from rtdeploy.cli.app import run

run()

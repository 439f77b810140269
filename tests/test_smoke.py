from tidings.client import Connection


async def test_publish_reaches_subscriber(node, token):
    async with Connection(node.ws_url, token("alice")) as alice, Connection(node.ws_url, token("bob")) as bob:
        await bob.subscribe("room:a")
        await alice.publish("room:a", {"text": "hi"})
        push = await bob.publications("room:a", timeout=5)
        assert push["data"] == {"text": "hi"} and push["offset"] == 1

"""Scene memory core: real SQLite files and a real PostgreSQL server (test/postgres_server.py)."""

import math
import os
import pathlib
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

import cv2
import numpy as np
from postgres_server import free_port
import pytest

from vlm_perception.core.errors import InputError
from vlm_perception.core.memory import (ChangePolicy, check_memory_url, MemoryConfig,
                                        MemoryEntry, MemoryStoreError, MemoryWriter,
                                        open_store, SceneMemory, SceneStore, thumbnail)
from vlm_perception.core.memory.postgres_store import PostgresSceneStore
from vlm_perception.core.types import Detection

FRONT = '/robot1/vlm_perception:front'
BACK = '/robot2/vlm_perception:back'
MODEL = 'open_clip:ViT-B-32'
QUERY = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)


def unit(cos: float) -> np.ndarray:
    """Return a unit 4-vector at cosine ``cos`` to QUERY."""
    return np.array([cos, math.sqrt(1.0 - cos * cos), 0.0, 0.0], dtype=np.float32)


def scene(stamp: int, labels: tuple[str, ...] = (), embedding: np.ndarray | None = None,
          source: str = FRONT, model: str = MODEL, caption: str = '',
          thumbnail_jpeg: bytes = b'') -> MemoryEntry:
    """Return an entry; detection i sits at (i, 0, 2) m."""
    detections = [Detection(label, 0.8, 10.0 * i, 20.0, 30.0, 40.0,
                            position=(float(i), 0.0, 2.0), size=(0.1, 0.2, 0.3))
                  for i, label in enumerate(labels)]
    return MemoryEntry(stamp, 'camera_optical', source, caption or f'scene {stamp}',
                       [('kitchen', 0.7)], detections, embedding,
                       model if embedding is not None else '', thumbnail_jpeg)


# --- a real PostgreSQL server: the postgres_server and pg_url fixtures (conftest.py)


# --- stores of both kinds, for the tests of the store contract


@pytest.fixture(params=['sqlite', 'postgres'])
def make_store(request: pytest.FixtureRequest,
               tmp_path: pathlib.Path) -> Iterator[Callable[..., SceneStore]]:
    """Yield store(max_entries=..., max_bytes=...) opening stores on one database."""
    stores: list[SceneStore] = []
    if request.param == 'postgres':
        url = request.getfixturevalue('pg_url')

        def make(**bounds: int) -> SceneStore:
            # vector=False: the exact scan is tested whatever the server has.
            stores.append(PostgresSceneStore(url, vector=False, **bounds))
            return stores[-1]
    else:
        path = str(tmp_path / 'memory.db')

        def make(**bounds: int) -> SceneStore:
            stores.append(open_store(path=path, **bounds))
            return stores[-1]
    yield make
    for store in stores:
        store.close()


def stamps(matches: list) -> list[int]:
    """Return the stamps of recall matches, in order."""
    return [match.stamp_ns for match in matches]


def test_label_match_returns_scene_detections_positions_and_thumbnail(
        make_store: Callable[..., SceneStore]) -> None:
    store = make_store()
    jpeg = thumbnail(np.full((48, 64, 3), 200, dtype=np.uint8))
    store.put(scene(5, ('Red  Cup', 'table'), unit(0.3), caption='a cup on a table',
                    thumbnail_jpeg=jpeg))
    store.put(scene(6, ('chair',)))
    [match] = store.recall('  red cup ')
    assert (match.stamp_ns, match.frame_id, match.source, match.score, match.caption) == \
        (5, 'camera_optical', FRONT, 1.0, 'a cup on a table')
    assert [(item.label, item.position, item.size, item.center_x) for item in
            match.detections] == [('Red  Cup', (0.0, 0.0, 2.0), (0.1, 0.2, 0.3), 0.0)]
    assert match.thumbnail_jpeg == b''
    assert store.recall('red cup', thumbnails=True)[0].thumbnail_jpeg == jpeg
    assert store.recall('cup') == []  # exact labels only, no substrings
    assert store.count() == 2


def test_label_match_beats_embeddings_ranked_by_cosine(
        make_store: Callable[..., SceneStore]) -> None:
    store = make_store()
    store.put(scene(1, ('mug',), unit(-0.9)))
    store.put(scene(2, ('plant',), unit(0.5)))
    store.put(scene(3, ('plant',), unit(0.9)))
    store.put(scene(4, ('plant',), unit(-0.2)))
    store.put(scene(5, ('plant',)))  # no embedding: found by label only
    matches = store.recall('Mug', QUERY, MODEL)
    assert stamps(matches) == [1, 3, 2, 4]
    assert [match.score for match in matches] == pytest.approx([1.0, 0.95, 0.75, 0.4],
                                                               abs=1e-6)
    assert [len(match.detections) for match in matches] == [1, 0, 0, 0]
    # Without an embedding (no tags capability), label matches only.
    assert stamps(store.recall('mug')) == [1]
    assert stamps(store.recall('plant', None, MODEL)) == [5, 4, 3, 2]


def test_ties_most_recent_first(make_store: Callable[..., SceneStore]) -> None:
    store = make_store()
    for stamp in (10, 30, 20):
        store.put(scene(stamp, ('door',), unit(0.6)))
    assert stamps(store.recall('door')) == [30, 20, 10]
    assert stamps(store.recall('window', QUERY, MODEL)) == [30, 20, 10]


def test_time_window_and_source_filters(make_store: Callable[..., SceneStore]) -> None:
    store = make_store()
    for stamp in range(1, 7):
        store.put(scene(stamp * 100, ('box',), unit(0.1 * stamp),
                        source=FRONT if stamp % 2 else BACK))
    assert stamps(store.recall('box', since_ns=200, until_ns=400)) == [400, 300, 200]
    assert stamps(store.recall('box', since_ns=500)) == [600, 500]
    assert stamps(store.recall('box', until_ns=200)) == [200, 100]
    assert stamps(store.recall('box', source=BACK)) == [600, 400, 200]
    assert stamps(store.recall('crate', QUERY, MODEL, source=FRONT, since_ns=200)) == \
        [500, 300]
    with pytest.raises(InputError, match='since and until'):
        store.recall('box', since_ns=-1)


def test_another_tagger_models_embeddings_are_ignored(
        make_store: Callable[..., SceneStore]) -> None:
    store = make_store()
    store.put(scene(1, ('sofa',), QUERY, model='siglip:base'))  # another family, same size
    store.put(scene(2, ('lamp',), np.ones(8, dtype=np.float32)))  # same id, another size
    store.put(scene(3, ('lamp',), unit(0.0)))
    assert stamps(store.recall('bed', QUERY, MODEL)) == [3]
    # A label still matches whatever model embedded the scene.
    assert [(m.stamp_ns, m.score) for m in store.recall('sofa', QUERY, MODEL)] == \
        [(1, 1.0), (3, 0.5)]
    assert stamps(store.recall('bed', QUERY, '')) == []


def test_max_results(make_store: Callable[..., SceneStore]) -> None:
    store = make_store()
    for stamp in range(12):
        store.put(scene(stamp, ('cup',)))
    assert stamps(store.recall('cup')) == list(range(11, 1, -1))
    assert stamps(store.recall('cup', max_results=3)) == [11, 10, 9]
    with pytest.raises(InputError, match='max_results'):
        store.recall('cup', max_results=-1)


def test_eviction_by_entries_oldest_first(make_store: Callable[..., SceneStore]) -> None:
    store = make_store(max_entries=3)
    for stamp in (50, 10, 40, 20, 30):
        store.put(scene(stamp, ('cup',), unit(0.5)))
    assert store.count() == 3
    assert stamps(store.recall('cup', max_results=100)) == [50, 40, 30]
    assert stamps(store.recall('x', QUERY, MODEL, max_results=100)) == [50, 40, 30]


def test_eviction_by_bytes_oldest_first(make_store: Callable[..., SceneStore]) -> None:
    jpeg = bytes(1000)
    probe = open_store()
    probe.put(scene(1, ('cup',), unit(0.5), thumbnail_jpeg=jpeg))
    size = probe.total_bytes()
    probe.close()
    assert size > 1000 + 16  # thumbnail and embedding are counted
    store = make_store(max_bytes=int(3.5 * size))
    for stamp in range(1, 7):
        store.put(scene(stamp, ('cup',), unit(0.5), thumbnail_jpeg=jpeg))
    assert stamps(store.recall('cup')) == [6, 5, 4]
    assert store.total_bytes() == 3 * size
    with pytest.raises(InputError, match='memory_max_bytes'):
        store.put(scene(7, ('cup',), thumbnail_jpeg=bytes(4 * size)))
    assert store.count() == 3


def test_evicted_scenes_leave_no_labels(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / 'memory.db')
    store = open_store(path=path, max_entries=2)
    for stamp in range(5):
        store.put(scene(stamp, ('cup', 'plate')))
    store.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute('SELECT COUNT(*) FROM memory_labels').fetchone()[0] == 4


def test_sqlite_file_survives_reopening(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / 'memory.db')
    store = open_store(path=path)
    store.put(scene(7, ('keys',), unit(0.8), thumbnail_jpeg=b'\xff\xd8jpeg'))
    store.close()
    store = open_store(path=path)
    [match] = store.recall('keys', QUERY, MODEL, thumbnails=True)
    assert (match.stamp_ns, match.score, match.thumbnail_jpeg) == (7, 1.0, b'\xff\xd8jpeg')
    assert store.recall('wallet', QUERY, MODEL)[0].score == pytest.approx(0.9)
    store.close()
    # Memory only: nothing outlives the store.
    memory = open_store()
    memory.put(scene(1, ('keys',)))
    memory.close()
    other = open_store()
    assert other.count() == 0
    other.close()


def test_sqlite_other_schema_version_refused(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / 'memory.db')
    open_store(path=path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE memory_meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(MemoryStoreError, match='schema version 999'):
        open_store(path=path)
    with pytest.raises(MemoryStoreError, match='memory_path'):
        open_store(path=str(tmp_path / 'missing' / 'memory.db'))


def test_change_policy() -> None:
    second = 1_000_000_000
    policy = ChangePolicy(change=0.1, period_s=30.0)
    assert policy.consider(scene(0, ('cup',), unit(1.0)))  # the first scene
    assert not policy.consider(scene(1 * second, ('Cup',), unit(0.95)))  # distance 0.05
    assert policy.consider(scene(2 * second, ('cup',), unit(0.85)))  # distance 0.15
    # Compared with the last kept (0.85), not the last seen.
    assert not policy.consider(scene(3 * second, ('cup',), unit(0.85)))
    assert policy.consider(scene(4 * second, ('cup', 'plate'), unit(0.85)))  # labels differ
    assert not policy.consider(scene(33 * second, ('cup', 'plate'), unit(0.85)))
    assert policy.consider(scene(34 * second, ('cup', 'plate'), unit(0.85)))  # period
    assert policy.consider(scene(5 * second, ('cup', 'plate'), unit(0.85)))  # time went back
    assert policy.consider(scene(6 * second, ('cup', 'plate'), unit(0.85), model='other'))
    assert policy.consider(scene(7 * second, ('cup', 'plate')))  # embedding gone
    assert not policy.consider(scene(8 * second, ('plate', 'cup')))  # no embeddings either
    policy.reset()
    assert policy.consider(scene(9 * second, ('cup', 'plate')))
    with pytest.raises(ValueError, match='memory_change'):
        ChangePolicy(change=3.0)


def test_writer_queue_full_drops_and_close_flushes(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / 'memory.db')
    store = open_store(path=path)
    # Another process's write transaction holds the file: the writer's first put waits.
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute('BEGIN IMMEDIATE')
    writer = MemoryWriter(store, queue_size=4)
    accepted = sum(writer.submit(scene(stamp, ('cup',))) for stamp in range(10))
    assert accepted + writer.dropped == 10
    assert 4 <= accepted <= 5 and writer.dropped >= 5
    blocker.execute('COMMIT')
    start = time.monotonic()
    assert writer.close(timeout=2.0) == 0
    assert time.monotonic() - start < 2.0
    assert (store.count(), writer.written) == (accepted, accepted)
    assert not writer.submit(scene(99, ('cup',)))  # closed
    store.close()


def test_writer_close_drops_and_counts_the_rest(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / 'memory.db')
    store = open_store(path=path, max_bytes=10_000)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute('BEGIN IMMEDIATE')
    writer = MemoryWriter(store, queue_size=8)
    assert writer.submit(scene(0, ('cup',), thumbnail_jpeg=bytes(20_000)))  # too large
    for stamp in range(1, 6):
        assert writer.submit(scene(stamp, ('cup',)))
    start = time.monotonic()
    rest = writer.close(timeout=0.5)
    assert 0.4 < time.monotonic() - start < 1.5
    # The too-large entry failed at once; entry 1 waits for the file's lock; 2-5 are dropped.
    assert rest == 4 and writer.dropped == 4
    blocker.execute('COMMIT')
    assert writer.flush(timeout=6.0)
    assert writer.failed == 1 and 'memory_max_bytes' in writer.last_error
    assert store.count() == writer.written == 1
    store.close()


def test_scene_memory_close_keeps_to_its_timeout_with_a_write_stuck(
        tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / 'memory.db')
    memory = SceneMemory(MemoryConfig(path=path, period_s=0.0))  # every scene kept
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute('BEGIN IMMEDIATE')  # the writer's first put waits for this lock
    for stamp in range(4):
        assert memory.offer(scene(stamp, ('cup',)))
    start = time.monotonic()
    dropped = memory.close(timeout=0.5)
    took = time.monotonic() - start
    # The flush and the wait for the write in hand share the 0.5 s: not 0.5 s and 2 s more.
    assert 0.4 < took < 1.5 and dropped == 3, (took, dropped)
    blocker.execute('COMMIT')
    blocker.close()
    with pytest.raises(MemoryStoreError, match='closed'):
        memory.recall('cup')


def test_a_closed_store_says_so(make_store: Callable[..., SceneStore]) -> None:
    store = make_store()
    store.put(scene(1, ('cup',)))
    store.close()
    for call in (lambda: store.recall('cup'), lambda: store.put(scene(2, ('cup',))),
                 store.count):
        with pytest.raises(MemoryStoreError, match='closed'):
            call()  # not the driver's error: the node says "scene memory: ... closed"


def test_two_robots_write_into_one_postgres_database(pg_url: str) -> None:
    robots = [(PostgresSceneStore(pg_url, max_entries=30, vector=False), source)
              for source in (FRONT, BACK)]
    writers = [(MemoryWriter(store), source) for store, source in robots]

    def drive(writer: MemoryWriter, source: str) -> None:
        for stamp in range(20):
            while not writer.submit(scene(stamp * 10 + (source == BACK), ('cart',),
                                          unit(0.5), source=source)):
                time.sleep(0.01)  # not the case under test: keep every entry

    threads = [threading.Thread(target=drive, args=pair) for pair in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20.0)
    for writer, _ in writers:
        assert writer.close(timeout=10.0) == 0 and writer.failed == 0, writer.last_error
    reader = PostgresSceneStore(pg_url, max_entries=30)
    assert reader.count() == 30  # eviction stayed exact with two writers
    matches = reader.recall('cart', max_results=100)
    assert {match.source for match in matches} == {FRONT, BACK}
    assert stamps(matches) == sorted(stamps(matches), reverse=True)
    assert min(stamps(matches)) == 50  # the oldest went first, from both robots
    assert {m.source for m in reader.recall('x', QUERY, MODEL, source=BACK)} == {BACK}
    for store in [reader] + [store for store, _ in robots]:
        store.close()


def test_concurrent_robots_never_pass_the_bound(pg_url: str) -> None:
    # Each put + evict commits as one, one robot at a time: no reader sees more than the bound.
    robots = [PostgresSceneStore(pg_url, max_entries=10, vector=False) for _ in range(4)]
    watcher = PostgresSceneStore(pg_url, max_entries=10, vector=False)
    done = threading.Event()
    seen: list[int] = []

    def write(index: int) -> None:
        for stamp in range(60):
            robots[index].put(scene(stamp * 4 + index, ('cart',)))

    def watch() -> None:
        while not done.is_set():
            seen.append(watcher.count())

    threads = [threading.Thread(target=write, args=(index,)) for index in range(4)]
    watching = threading.Thread(target=watch)
    watching.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30.0)
    done.set()
    watching.join(timeout=5.0)
    assert len(seen) > 10 and max(seen) <= 10
    assert stamps(watcher.recall('cart', max_results=100)) == list(range(239, 229, -1))
    for store in robots + [watcher]:
        store.close()


def test_postgres_store_reconnects_after_a_dropped_connection(pg_url: str) -> None:
    import psycopg

    store = PostgresSceneStore(pg_url, vector=False)
    writer = MemoryWriter(store)
    writer.submit(scene(1, ('cup',)))
    assert writer.flush(timeout=5.0)
    with psycopg.connect(pg_url, autocommit=True) as admin:  # as a server restart would
        admin.execute('SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
                      'WHERE datname = current_database() AND pid <> pg_backend_pid()')
    writer.submit(scene(2, ('cup',)))  # fails on the dead connection, counted
    writer.submit(scene(3, ('cup',)))  # a new connection
    assert writer.close(timeout=5.0) == 0
    assert (writer.written, writer.failed) == (2, 1), writer.last_error
    assert stamps(store.recall('cup')) == [3, 1]  # the read connection dropped too: asked again
    store.close()
    with pytest.raises(MemoryStoreError, match='closed'):
        store.recall('cup')  # not a silent reconnection


def test_pgvector_ranks_like_the_exact_scan(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url) as connection:
        if connection.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
                              ).fetchone() is None:
            pytest.skip('the test PostgreSQL server has no pgvector extension '
                        '(postgresql-15-pgvector) to test')
    store = PostgresSceneStore(pg_url)
    assert store.uses_pgvector and 'pgvector' in store.description
    for stamp, cos in enumerate((0.5, 0.9, -0.2, 0.9)):
        store.put(scene(stamp, ('plant',), unit(cos)))
    store.put(scene(9, ('mug',), unit(-0.9)))
    matches = store.recall('mug', QUERY, MODEL)
    assert stamps(matches) == [9, 3, 1, 0, 2]
    assert [m.score for m in matches] == pytest.approx([1.0, 0.95, 0.95, 0.75, 0.4], abs=1e-5)
    store.close()


def test_postgres_unreachable_names_the_fix() -> None:
    pytest.importorskip('psycopg', reason='psycopg is not installed')
    start = time.monotonic()
    with pytest.raises(MemoryStoreError, match='PGPASSWORD / PGPASSFILE'):
        open_store(url=f'postgresql://postgres@127.0.0.1:{free_port()}/memory')
    assert time.monotonic() - start < 10.0


@pytest.mark.parametrize('url', [
    'postgresql://robot:hunter2@db.local/fleet',
    'postgres://robot:@db.local/fleet',
    'postgresql://robot@db.local/fleet?password=hunter2',
    'host=db.local user=robot password=hunter2 dbname=fleet',
    "host=db.local PASSWORD = 'hunter2'",
])
def test_url_with_a_password_refused(url: str) -> None:
    with pytest.raises(InputError) as refused:
        open_store(url=url)
    message = str(refused.value)
    assert 'PGPASSWORD' in message and 'PGPASSFILE' in message
    assert 'hunter2' not in message


def test_urls_without_a_password_pass_and_other_schemes_refused() -> None:
    for url in ('postgresql://robot@db.local:5433/fleet?sslmode=require',
                'host=db.local user=robot dbname=fleet'):
        check_memory_url(url)
    with pytest.raises(InputError, match='PostgreSQL URL'):
        check_memory_url('mysql://robot@db.local/fleet')


def test_path_and_url_together_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match='not both'):
        open_store(path=str(tmp_path / 'memory.db'), url='postgresql://robot@db/fleet')
    with pytest.raises(InputError, match='not both'):
        MemoryConfig(path='memory.db', url='postgresql://robot@db/fleet').validate()
    with pytest.raises(InputError, match='memory_queue'):
        MemoryConfig(queue=0).validate()
    assert not os.path.exists(tmp_path / 'memory.db')


def test_thumbnail() -> None:
    rgb = np.zeros((480, 640, 3), dtype=np.uint8)
    rgb[:, :320, 0] = 255  # left half red, right half black
    decoded = cv2.imdecode(np.frombuffer(thumbnail(rgb), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (120, 160, 3)
    assert decoded[60, 40, 2] > 200 and decoded[60, 120, 2] < 50  # BGR: red stayed left
    small = cv2.imdecode(np.frombuffer(thumbnail(rgb[:50, :40]), np.uint8), cv2.IMREAD_COLOR)
    assert small.shape == (50, 40, 3)
    with pytest.raises(InputError, match='HxWx3 uint8'):
        thumbnail(np.zeros((10, 10), dtype=np.uint8))


def test_scene_memory_keeps_changed_scenes_per_camera(tmp_path: pathlib.Path) -> None:
    config = MemoryConfig(path=str(tmp_path / 'memory.db'), period_s=30.0, change=0.1)
    memory = SceneMemory(config)
    rgb = np.full((240, 320, 3), 90, dtype=np.uint8)
    offers = [scene(1, ('cup',), unit(1.0)), scene(2, ('cup',), unit(1.0), source=BACK),
              scene(3, ('cup',), unit(0.99)), scene(4, ('cup', 'plate'), unit(0.99))]
    assert [memory.offer(entry, rgb) for entry in offers] == [True, True, False, True]
    assert memory.writer.flush(timeout=5.0)
    matches = memory.recall('cup', QUERY, MODEL, thumbnails=True)
    assert [(m.stamp_ns, m.source) for m in matches] == [(4, FRONT), (2, BACK), (1, FRONT)]
    assert cv2.imdecode(np.frombuffer(matches[0].thumbnail_jpeg, np.uint8),
                        cv2.IMREAD_COLOR).shape == (120, 160, 3)
    assert memory.close() == 0
    assert {key: memory.stats()[key] for key in ('offered', 'kept', 'written', 'dropped')} \
        == {'offered': 4, 'kept': 3, 'written': 3, 'dropped': 0}
    reopened = SceneMemory(config)
    assert stamps(reopened.recall('plate')) == [4]
    reopened.close()


def test_memory_imports_neither_ros_nor_drivers() -> None:
    # The node imports the memory at startup; psycopg only when a URL is opened.
    code = ('import sys, vlm_perception.core.memory; '
            'print(sorted(m for m in ("rclpy", "psycopg", "torch", "cv2") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == '[]'

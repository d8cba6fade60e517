from tests.test_download import tiny_torrent, seeder, local_opts, download, Seeder  # noqa
import libtorrent as lt

def test_dbg(tmp_path, tiny_torrent, seeder, tiny_ckpt):
    first = tmp_path / "first"
    download(tiny_torrent, first, local_opts([seeder.port], exclude=["ckpt-0/*"]))
    import os
    from grokfetch.torrent.state import StateFiles
    print("STATE", sorted(os.listdir(first / ".grokfetch")))
    ih = str(lt.torrent_info(str(tiny_torrent)).info_hashes().v1)
    rp = StateFiles(first, ih).read_resume()
    print("RESUME", rp is not None and sum(rp.have_pieces), rp is not None and list(rp.file_priorities)[-3:])
    with Seeder(first) as partial:
        partial.session.apply_settings({"alert_mask": int(lt.alert_category.all)})
        try:
            download(tiny_torrent, tmp_path / "second", local_opts([partial.port], include=["*.json"], timeout=8))
        except Exception as e:
            st = partial.handle.status()
            msgs = [a.message() for a in partial.session.pop_alerts()]
            print("FAIL", e, st.state, st.num_pieces, st.paused, st.upload_mode)
            print("\n".join(m for m in msgs if "peer" not in m and "UNCHOKE" not in m and "UPDATE LIST" not in m and "<<< CONNECTION" not in m and "ASYNC" not in m and "READ" not in m and "WRITE" not in m and "SEND_DATA" not in m and "RECEIVE_DATA" not in m and "WROTE" not in m)[-8000:])
            raise

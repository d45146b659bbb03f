"""A synthetic crowd with ground truth, for demos, tests and benchmarks.

``simulate(out, ...)`` writes::

    photos/<user_id>/<photo_id>.jpg   JPEGs (quality 80-95; ~5% stored rotated with EXIF Orientation 6 or 8)
    photos.csv                        photo_id,user_id,path,submitted_at,device   (path relative to out)
    annotations.jsonl                 one assignment per line, sorted by (photo_id, annotator_id)
    config.toml                       [inputs] and [output] pointing at the files above
    truth/masks/<photo_id>.png        true class-index mask in the oriented frame
    truth/duplicates.csv              photo_id,original_photo_id,kind,same_user
    truth/annotators.csv              annotator_id,profile,epsilon,jitter,grow,skip_prob,swap_prob,alias_prob
    truth/photos.csv                  photo_id,user_id,device,width,height,orientation,jpeg_quality,gold,
                                      original_photo_id,kind,has_teeth,has_beard,face_width,roll_deg,defect
    truth/broken.csv                  kind,file,row,photo_id,detail   (rows only with broken=True)

``defect`` is '' or the photo's injected flaw (``defects=N`` gives N of each, never on gold, duplicated or broken
photos): ``blurred`` (out of focus or shaken), ``dark`` (under-exposed and noisy) or ``tiny_face`` (the subject far
away, the face 5-10% of the shorter side wide). The truth masks and the annotators follow what is really there.

crowdseg never reads ``truth/``.
"""

from pipeline.simulate.crowd import simulate

__all__ = ["simulate"]
